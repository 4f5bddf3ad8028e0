// The kernel's host interface, free of torch so the instantiation units compile quickly.
#pragma once
#include <cuda_runtime.h>
#include "pod/params.cuh"

namespace pod {
// Launches the persistent fused kernel with num_ctas CTAs (num_sms * p.ctas_per_sm).
template <typename T, int D>
cudaError_t launch(const PodParams& p, int num_ctas, cudaStream_t stream);
// How many CTAs of this instantiation fit on one SM.
template <typename T, int D>
cudaError_t ctas_per_sm(int* n);
}  // namespace pod
