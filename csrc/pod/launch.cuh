// Host side of one (dtype, head dim) instantiation: which tile configuration the device runs,
// launch configuration and occupancy.
#pragma once
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <type_traits>
#include "../pod_attention.h"
#include "pod_kernel_sm90.cuh"
#include "tile_config.cuh"

namespace pod {

constexpr int kMaxDevices = 64;

inline int current_device() {
  int dev = 0;
  return cudaGetDevice(&dev) == cudaSuccess && dev < kMaxDevices ? dev : -1;
}

// Whether the current device runs the Hopper configuration: builds with -DPOD_WGMMA_PREFILL
// (setup.py adds it when compiling for sm_90a) on a compute capability 9.0 device.
inline bool hopper_device() {
#ifdef POD_WGMMA_PREFILL
  static int cached[kMaxDevices] = {};  // 0: not asked yet, 1: no, 2: yes
  const int dev = current_device();
  if (dev < 0) return false;
  if (cached[dev] == 0) {
    int major = 0, minor = 0;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
    cached[dev] = major == 9 && minor == 0 ? 2 : 1;
  }
  return cached[dev] == 2;
#else
  return false;
#endif
}

// Calls f(Cfg{}) with the configuration the current device runs. T is the cache's element type:
// __nv_fp8_e4m3 runs the fp8 configuration, which only the Hopper build has (the op refuses it
// elsewhere; FLASH_ATTN's fp8 path, which runs single-phase batches, needs Hopper too).
template <typename T, int D, class F>
cudaError_t with_config(F&& f) {
  if constexpr (std::is_same_v<T, __nv_fp8_e4m3>) {
    if (!hopper_device()) return cudaErrorNotSupported;
    return f(TileConfig<__half, D, true, true>{});
  } else {
    return hopper_device() ? f(TileConfig<T, D, true>{}) : f(TileConfig<T, D, false>{});
  }
}

// The kernel Cfg runs on, its block size and its dynamic shared memory: the warp-specialized
// kernel for the Hopper configuration at head dims up to 128, else the two-CTA one.
template <class Cfg>
struct Kernel {
#if defined(POD_WGMMA_PREFILL)
  static constexpr bool kWarpSpecialized = Cfg::kHopper && Cfg::D <= 128;
#else
  static constexpr bool kWarpSpecialized = false;
#endif
  static constexpr int kThreads = kWarpSpecialized ? 512 : Cfg::kThreads;
  static constexpr size_t smem() {
#if defined(POD_WGMMA_PREFILL)
    if constexpr (kWarpSpecialized) return sm90::WarpSpecialized<Cfg>::kSmemAlloc;
#endif
    return Cfg::kSmemAlloc;
  }
  static auto function() {
    if constexpr (kWarpSpecialized) return pod_warp_specialized_kernel<Cfg>;
    else return pod_attention_kernel<Cfg>;
  }
};

// The kernel's dynamic shared memory limit is a per-device attribute: raised once per device.
template <class Cfg>
cudaError_t raise_smem_limit() {
  static bool raised[kMaxDevices] = {};
  const int dev = current_device();
  if (dev >= 0 && raised[dev]) return cudaSuccess;
  const cudaError_t e = cudaFuncSetAttribute(Kernel<Cfg>::function(), cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             int(Kernel<Cfg>::smem()));
  if (e == cudaSuccess && dev >= 0) raised[dev] = true;
  return e;
}

template <typename T, int D>
cudaError_t launch(const PodParams& p, int num_ctas, cudaStream_t stream) {
  return with_config<T, D>([&](auto cfg) {
    using K = Kernel<decltype(cfg)>;
    const cudaError_t prepared = raise_smem_limit<decltype(cfg)>();
    if (prepared != cudaSuccess) return prepared;
    K::function()<<<num_ctas, K::kThreads, K::smem(), stream>>>(p);
    return cudaGetLastError();
  });
}

template <typename T, int D>
cudaError_t ctas_per_sm(int* n) {
  return with_config<T, D>([&](auto cfg) {
    using K = Kernel<decltype(cfg)>;
    const cudaError_t e = raise_smem_limit<decltype(cfg)>();
    if (e != cudaSuccess) return e;
    return cudaOccupancyMaxActiveBlocksPerMultiprocessor(n, K::function(), K::kThreads, K::smem());
  });
}

template <typename T, int D>
int prefill_tile_rows() {
  int rows = 0;
  with_config<T, D>([&](auto cfg) {
    rows = decltype(cfg)::kPrefillRows;
    return cudaSuccess;
  });
  return rows;
}

}  // namespace pod

#define POD_INSTANTIATE(T, D)                                                               \
  template cudaError_t pod::launch<T, D>(const pod::PodParams&, int, cudaStream_t);       \
  template cudaError_t pod::ctas_per_sm<T, D>(int*);                                       \
  template int pod::prefill_tile_rows<T, D>();
