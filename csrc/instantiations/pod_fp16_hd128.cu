#include "../pod/launch.cuh"
POD_INSTANTIATE(__half, 128)
