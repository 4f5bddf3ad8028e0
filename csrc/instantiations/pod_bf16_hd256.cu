#include "../pod/launch.cuh"
POD_INSTANTIATE(__nv_bfloat16, 256)
