// The synchronisation the warp-specialized kernel's roles use (sm_90): CUTLASS's mbarrier and
// register-reconfiguration primitives, named here by what the kernel does with them.
#pragma once
#include <cstdint>

#if defined(POD_WGMMA_PREFILL)  // builds with CUTLASS/CuTe's headers only
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>

namespace pod::sm90 {

// An mbarrier in shared memory. Each completes phases 0, 1, 0, ...; a waiter passes once the phase
// of the given parity has completed. A barrier nobody has arrived on yet counts its phase "-1"
// (parity 1) as completed, so a producer's first wait for a free stage passes at once.
struct MBarrier {
  uint64_t word;
  __device__ __forceinline__ void init(int arrivals) { cutlass::arch::ClusterBarrier::init(&word, arrivals); }
  __device__ __forceinline__ void wait(uint32_t parity) { cutlass::arch::ClusterBarrier::wait(&word, parity); }
  __device__ __forceinline__ void arrive() { cutlass::arch::ClusterBarrier::arrive(&word); }
  // Arrives once this thread's earlier cp.async copies have landed (counts as one arrival).
  __device__ __forceinline__ void arrive_after_copies() { cutlass::arch::cpasync_barrier_arrive_noinc(&word); }
};

// Makes mbarrier initialisation visible to the other threads (a CTA barrier must follow).
__device__ __forceinline__ void fence_barrier_init() { cutlass::arch::fence_barrier_init(); }

// A position in a ring of kStages stages: the stage and the parity of its current use.
template <int kStages>
struct RingPos {
  int stage = 0;
  uint32_t parity = 0;
  __device__ __forceinline__ void advance() {
    if (++stage == kStages) {
      stage = 0;
      parity ^= 1;
    }
  }
};

// setmaxnreg: a warpgroup gives registers back to the SM's pool or takes them from it.
template <int kRegs>
__device__ __forceinline__ void release_registers() { cutlass::arch::warpgroup_reg_dealloc<kRegs>(); }
template <int kRegs>
__device__ __forceinline__ void claim_registers() { cutlass::arch::warpgroup_reg_alloc<kRegs>(); }

}  // namespace pod::sm90
#endif  // POD_WGMMA_PREFILL
