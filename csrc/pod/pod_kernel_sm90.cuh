// The warp-specialized Hopper kernel (sm_90a; head dims 64 and 128): one persistent CTA per SM of
// four warpgroups with fixed roles, so that prefill and decode work share every SM at warpgroup
// level (docs/design.md, "The warp-specialized Hopper kernel"):
//   warpgroup 0     prefill producer: takes prefill items and copies their query rows and K/V tiles
//                   into an mbarrier ring (prefill_mainloop_sm90.cuh); keeps 56 registers
//   warpgroups 1-2  prefill consumers: 64 query rows each of the producer's 128-row item, on wgmma;
//                   160 registers each
//   warpgroup 3     decode: takes decode items and runs them with its own loads (run_item); 136
// 56 + 2 x 160 + 136 = 512 registers per four threads: the whole register file at 512 threads.
// Once the prefill queue is empty, both consumer warpgroups take decode items too, each in its own
// half of the prefill shared memory, which is then free: three decode teams per SM, so that a
// decode-only batch keeps three key loops' copies and math in flight (the decode loop is bound by
// its own latency chain, not by HBM: docs/design.md, "fp8 KV cache"). Each role synchronises on
// barriers of its own; the whole CTA meets only at the start and the end.
#pragma once
#include "pod_kernel.cuh"
#include "prefill_mainloop_sm90.cuh"

#if defined(POD_WGMMA_PREFILL)
namespace pod::sm90 {

template <class Cfg_>
struct WarpSpecialized {
  using Cfg = Cfg_;
  static_assert(Cfg::kHopper && Cfg::D <= 128 && Cfg::kPrefillRows == 128 && Cfg::kThreads == 128,
                "two m64 consumer slices of one 128-row item");
  static constexpr int kThreads = 4 * 128;
  static constexpr int kProducerRegs = 56, kConsumerRegs = 160, kDecodeRegs = 136;
  static_assert(kProducerRegs + 2 * kConsumerRegs + kDecodeRegs == 512, "the register file at 512 threads");
  // K is freed once S = Q K^T is done, V only after P V: V gets the deeper ring (a fourth K stage
  // would not fit beside the decode region). An fp8 cache's Q and K tiles are half the size (bytes)
  // and its V passes through two staging stages.
  using Ring = std::conditional_t<Cfg::kFp8, PrefillRing<Cfg, 4, 4, 2>, PrefillRing<Cfg, 3, 4>>;
  // A decode team's region (run_item's layout); the merge scratch reuses it.
  static constexpr size_t kDecodeBytes = Cfg::kDecodeBytes;
  // The prefill region also holds the consumers' two decode regions once prefill is done (an fp8
  // cache's ring is smaller than two of them: the region grows to fit).
  static constexpr size_t kPrefillBytes = Ring::kBytes > 2 * kDecodeBytes ? Ring::kBytes : 2 * kDecodeBytes;
  static constexpr size_t kSmemBytes = kPrefillBytes + kDecodeBytes;
  static constexpr size_t kSmemAlloc = kSmemBytes + 1024;  // tiles start on a 1 KiB boundary
  // Hardware barrier ids (0 is the whole CTA's).
  enum : int { kProducerBar = 1, kConsumersBar = 2, kDecodeBar = 3, kFallbackBar0 = 4, kFallbackBar1 = 5 };
};

// What the CTA keeps in static shared memory beside the tiles.
template <class WS>
struct WsShared {
  MBarrier q_full, q_empty;
  MBarrier k_full[WS::Ring::kKStages], k_empty[WS::Ring::kKStages];
  MBarrier v_full[WS::Ring::kVStages], v_empty[WS::Ring::kVStages];
  WorkItem producer_item[2];  // the producer leader's hand-off to its warpgroup (double-buffered)
  int producer_index[2];
  WorkItem consumer_item;     // the producer's hand-off to the consumers, published by q_full
  int consumer_index;
  float merge_scratch[2 * 128];  // the consumers' split merge
  int merge_flag;
  ItemSlot decode_slot, fallback_slot[2];  // the decode warpgroup's, the consumers'
};

template <class WS>
__device__ __forceinline__ void run_producer(const PodParams& p, const typename WS::Ring& ring,
                                             WsShared<WS>& sh) {
  const int tid = threadIdx.x;  // warpgroup 0
  Scheduler sched{p.plan, p.counters, p.ctas_per_sm};
  if (tid == 0) sched.start_queues();
  RingPositions<typename WS::Ring> pos;
  for (int n = 0;; ++n) {
    const int b = n & 1;
    if (tid == 0) {
      const int index = sched.take(kPrefill);
      sh.producer_index[b] = index;
      if (index >= 0) sh.producer_item[b] = plan_item(p.plan, index);
    }
    named_barrier_sync(WS::kProducerBar, 128);
    const int index = sh.producer_index[b];
    ring.q_empty->wait(b ^ 1);  // the consumers are done with the last item's query rows
    if (tid == 0) {
      sh.consumer_index = index;
      if (index >= 0) sh.consumer_item = sh.producer_item[b];
      ring.q_full->arrive();  // publishes the hand-off
    }
    if (index < 0) {
      ring.q_full->arrive_after_copies();  // no copies: completes the phase, which says "done"
      return;
    }
    const WorkItem it = sh.producer_item[b];
    if constexpr (WS::Cfg::kFp8) produce_item_fp8<typename WS::Cfg>(p, it, ring, pos, tid);
    else produce_item<typename WS::Cfg>(p, it, ring, pos, tid);
  }
}

template <class WS>
__device__ __forceinline__ void run_consumer(const PodParams& p, const typename WS::Ring& ring,
                                             WsShared<WS>& sh, int role_slice) {
  using Cfg = typename WS::Cfg;
  // Read from lane 0, the slice is warp-uniform to the compiler: the query operand's wgmma
  // descriptors then live in uniform registers instead of being moved there before every wgmma.
  const int slice = __shfl_sync(0xffffffff, role_slice, 0);
  const Team<256> both{int(threadIdx.x) - 128, WS::kConsumersBar};
  const int warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
  RingPositions<typename WS::Ring> pos;
  for (int n = 0;; ++n) {
    ring.q_full->wait(n & 1);
    const int index = sh.consumer_index;
    if (index < 0) return;
    const WorkItem it = sh.consumer_item;
    const uint32_t start = trace_clock();
    const int used = it.n_tok * it.nh;
    int row_pos[1][2];
    thread_row_positions(it, Cfg::prefill_row(warp, slice), lane, row_pos[0]);
    WarpState<Cfg, 1> st;
    st.init();
    with_item_scales<Cfg>(p, it, [&](const PodParams& ip) {
      with_softcap(ip, [&](auto softcap) {
        consume_item<Cfg, typename WS::Ring, decltype(softcap)::value>(ip, it, ring, pos, slice, st, row_pos);
      });
      const RowSink<Cfg> sink{ip, it};
      store_warp_rows<Cfg>(st, sink, warp, slice, used);
      if (it.slot >= 0) finish_split<Cfg>(ip, it, used, sh.merge_scratch, &sh.merge_flag, both);
    });
    trace_item(p, index, start, both.leader());
  }
}

// A decode team's loop: decode items only, in the shared-memory region `smem`.
template <class WS>
__device__ __forceinline__ void run_decode(const PodParams& p, char* smem, ItemSlot& slot, int barrier) {
  using Cfg = typename WS::Cfg;
  const Team<128> team{int(threadIdx.x) & 127, barrier};
  Scheduler sched{p.plan, p.counters, p.ctas_per_sm};
  if (team.leader()) sched.start_queues();
  run_team_items<Cfg, true>(p, smem, slot, team, [&](int*) { return sched.take(kDecode); });
}

template <class WS>
__device__ __forceinline__ void run_warp_specialized(const PodParams& p) {
  extern __shared__ __align__(128) char smem_raw[];
  char* smem = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);
  __shared__ WsShared<WS> sh;
  using T = typename WS::Cfg::T;
  const typename WS::Ring ring{reinterpret_cast<T*>(smem), &sh.q_full, &sh.q_empty, sh.k_full,
                               sh.k_empty, sh.v_full, sh.v_empty};
  if (threadIdx.x == 0) {
    ring.init_barriers(128);
    fence_barrier_init();
  }
  __syncthreads();
  // Each role is one branch (setmaxnreg needs that); the roles meet again at the CTA barrier, and
  // the last CTA to get there re-zeroes the scheduler's counters.
  const int role = threadIdx.x / 128;
  if (role == 0) {
    release_registers<WS::kProducerRegs>();
    run_producer<WS>(p, ring, sh);
  } else if (role <= 2) {
    claim_registers<WS::kConsumerRegs>();
    run_consumer<WS>(p, ring, sh, role - 1);
    // The other consumer may still read the ring's last stages: wait for it before reusing them.
    named_barrier_sync(WS::kConsumersBar, 256);
    const int c = role - 1;
    run_decode<WS>(p, smem + c * WS::kDecodeBytes, sh.fallback_slot[c], c == 0 ? WS::kFallbackBar0 : WS::kFallbackBar1);
  } else {
    claim_registers<WS::kDecodeRegs>();
    run_decode<WS>(p, smem + WS::kPrefillBytes, sh.decode_slot, WS::kDecodeBar);
  }
  __syncthreads();
  if (threadIdx.x == 0) Scheduler{p.plan, p.counters, p.ctas_per_sm}.finish();
}

}  // namespace pod::sm90
#endif  // POD_WGMMA_PREFILL

namespace pod {

template <class Cfg>
__global__ void __launch_bounds__(512, 1) pod_warp_specialized_kernel(const PodParams p) {
#if defined(POD_WGMMA_PREFILL)
  if constexpr (Cfg::kHopper == kCompilingHopper) sm90::run_warp_specialized<sm90::WarpSpecialized<Cfg>>(p);
  else __trap();
#else
  __trap();
#endif
}

}  // namespace pod
