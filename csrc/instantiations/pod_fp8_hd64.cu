#include "../pod/launch.cuh"
POD_INSTANTIATE(__nv_fp8_e4m3, 64)
