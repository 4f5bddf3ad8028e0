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
// Query rows of one prefill work item on the current device (plan.py builds items this tall).
template <typename T, int D>
int prefill_tile_rows();
}  // namespace pod
