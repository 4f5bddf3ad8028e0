// Host side of one (dtype, head dim) instantiation: launch configuration and occupancy.
#pragma once
#include <cuda_runtime.h>
#include "../pod_attention.h"
#include "pod_kernel.cuh"
#include "tile_config.cuh"

namespace pod {

template <typename T, int D>
static cudaError_t raise_smem_limit() {
  using Cfg = TileConfig<T, D>;
  return cudaFuncSetAttribute(pod_attention_kernel<Cfg>,
                              cudaFuncAttributeMaxDynamicSharedMemorySize, int(Cfg::kSmemAlloc));
}

template <typename T, int D>
cudaError_t launch(const PodParams& p, int num_ctas, cudaStream_t stream) {
  using Cfg = TileConfig<T, D>;
  static const cudaError_t prepared = raise_smem_limit<T, D>();
  if (prepared != cudaSuccess) return prepared;
  pod_attention_kernel<Cfg><<<num_ctas, Cfg::kThreads, Cfg::kSmemAlloc, stream>>>(p);
  return cudaGetLastError();
}

template <typename T, int D>
cudaError_t ctas_per_sm(int* n) {
  using Cfg = TileConfig<T, D>;
  const cudaError_t e = raise_smem_limit<T, D>();
  if (e != cudaSuccess) return e;
  return cudaOccupancyMaxActiveBlocksPerMultiprocessor(n, pod_attention_kernel<Cfg>, Cfg::kThreads,
                                                       Cfg::kSmemAlloc);
}

}  // namespace pod

#define POD_INSTANTIATE(T, D)                                                               \
  template cudaError_t pod::launch<T, D>(const pod::PodParams&, int, cudaStream_t);       \
  template cudaError_t pod::ctas_per_sm<T, D>(int*);
