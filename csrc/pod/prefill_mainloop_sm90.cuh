// Prefill items in the warp-specialized Hopper kernel (pod_kernel_sm90.cuh): the producer
// warpgroup copies an item's query rows and K/V tiles into shared memory with cp.async, each copy
// completing on an mbarrier; two consumer warpgroups take 64 query rows each and compute on wgmma,
// with the next tile's S = Q K^T in flight while they run this tile's softmax, and the previous
// tile's P V while they run the next one's (docs/design.md, "The warp-specialized Hopper kernel").
#pragma once
#include "attention_tile_sm90.cuh"
#include "barrier_sm90.cuh"
#include "tile_loader.cuh"

#if defined(POD_WGMMA_PREFILL)
namespace pod::sm90 {

// The shared memory and barriers prefill items flow through: one query tile (kPrefillRows rows,
// two m64 slices, one per consumer), a ring of K tiles and a ring of V tiles. K is released as
// soon as S = Q K^T is done, V only after P V, so V can have the deeper ring in the same shared
// memory (docs/design.md, "The warp-specialized Hopper kernel").
template <class Cfg, int kKeys_, int kKStages_, int kVStages_>
struct PrefillRing {
  using T = typename Cfg::T;
  static constexpr int kKStages = kKStages_, kVStages = kVStages_;
  static constexpr int kKeys = kKeys_;
  static constexpr int kTileElems = kKeys * Cfg::D;
  static constexpr size_t kBytes = sizeof(T) * (Cfg::D * Cfg::kPrefillRows + (kKStages + kVStages) * kTileElems);
  static constexpr int kConsumerWarps = 8;

  T* q;               // [kPrefillRows x D], SW128; the K ring and the V ring follow it
  MBarrier* q_full;   // the item's query rows landed (128 producer copies + the item hand-off)
  MBarrier* q_empty;  // both consumers are done reading them (one arrival per consumer warp)
  MBarrier* k_full;   // [kKStages]: the stage's tile landed (one arrival per producer thread)
  MBarrier* k_empty;  // [kKStages]: every consumer warp is done with it
  MBarrier* v_full;   // [kVStages], likewise
  MBarrier* v_empty;

  __device__ __forceinline__ T* k(int stage) const { return q + Cfg::D * Cfg::kPrefillRows + stage * kTileElems; }
  __device__ __forceinline__ T* v(int stage) const { return k(kKStages) + stage * kTileElems; }

  __device__ __forceinline__ void init_barriers(int producer_threads) const {
    q_full->init(producer_threads + 1);
    q_empty->init(kConsumerWarps);
    for (int s = 0; s < kKStages; ++s) {
      k_full[s].init(producer_threads);
      k_empty[s].init(kConsumerWarps);
    }
    for (int s = 0; s < kVStages; ++s) {
      v_full[s].init(producer_threads);
      v_empty[s].init(kConsumerWarps);
    }
  }
};

// Where a role is in the two rings.
template <class Ring>
struct RingPositions {
  RingPos<Ring::kKStages> k;
  RingPos<Ring::kVStages> v;
};

__device__ __forceinline__ int num_kv_tiles(const WorkItem& it, int keys) {
  return (it.kv_end - it.kv_start + keys - 1) / keys;
}

// The producer's part of one item (all 128 producer threads; tid is a thread's index among them):
// the query rows (its caller waited for q_empty), then each tile's K and V, each copied as soon as
// its ring has a free stage. V stages free a tile later than K stages (P V runs a tile behind
// S = Q K^T), so copying a tile's K and V together would hold K back to V's pace and leave the
// next S waiting for its copy (docs/design.md, "The warp-specialized Hopper kernel").
template <class Cfg, class Ring>
__device__ __forceinline__ void produce_item(const PodParams& p, const WorkItem& it, const Ring& ring,
                                             RingPositions<Ring>& pos, int tid) {
  using Layout = Sw128Layout<Ring::kKeys>;
  load_query_rows<Cfg, Sw128Layout<Cfg::kPrefillRows>>(ring.q, p, it, Cfg::kPrefillRows, tid);
  ring.q_full->arrive_after_copies();
  const int num_tiles = num_kv_tiles(it, Ring::kKeys);
  for (int t = 0; t < num_tiles; ++t) {
    const int tile_start = it.kv_start + t * Ring::kKeys;
    ring.k_empty[pos.k.stage].wait(pos.k.parity ^ 1);
    load_kv_tile<Cfg, Ring::kKeys, Layout, kLoadK>(ring.k(pos.k.stage), nullptr, p, it, tile_start, tid);
    ring.k_full[pos.k.stage].arrive_after_copies();
    pos.k.advance();
    ring.v_empty[pos.v.stage].wait(pos.v.parity ^ 1);
    load_kv_tile<Cfg, Ring::kKeys, Layout, kLoadV>(nullptr, ring.v(pos.v.stage), p, it, tile_start, tid);
    ring.v_full[pos.v.stage].arrive_after_copies();
    pos.v.advance();
  }
}

// A consumer warp's arrival on a barrier counted in warps: after all of its lanes are done.
__device__ __forceinline__ void warp_arrive(MBarrier* bar) {
  __syncwarp();
  if ((threadIdx.x & 31) == 0) bar->arrive();
}

// Waits for a stage's copies. As in CUTLASS's cp.async-fed GMMA mainloops and in FA3, no proxy
// fence follows the wait (one there measured 2-3% slower on prefill).
__device__ __forceinline__ void wait_full(MBarrier* bar, uint32_t parity) { bar->wait(parity); }

// One consumer warpgroup's part of one item: m64 slice `slice` of the query rows against every K/V
// tile, into st (its warp w holds rows 64 * slice + 16 * w). Per tile: S = Q K, free K, softmax,
// O += P V, free V. The two consumer warpgroups drift apart, so one's softmax runs beside the
// other's wgmma.
template <class Cfg, class Ring>
__device__ __forceinline__ void consume_item(const PodParams& p, const WorkItem& it, const Ring& ring,
                                             RingPositions<Ring>& pos, int slice,
                                             WarpState<Cfg, 1>& st, const int (&row_pos)[1][2]) {
  using T = typename Cfg::T;
  constexpr int NK = Ring::kKeys;
  const int num_tiles = num_kv_tiles(it, NK);
  const int mask_from = min(it.kv_end, it.q_pos0 + 1) - NK;  // tiles starting past this are masked
  for (int t = 0; t < num_tiles; ++t) {
    const int tile_start = it.kv_start + t * NK;
    float s[NK / 8][4];
    wait_full(ring.k_full + pos.k.stage, pos.k.parity);
    issue_qk<Cfg, NK>(ring.q, slice, ring.k(pos.k.stage), s);
    cute::warpgroup_wait<0>();
    fence_accumulators<NK / 2>(&s[0][0]);
    warp_arrive(ring.k_empty + pos.k.stage);
    pos.k.advance();
    if (t == num_tiles - 1) warp_arrive(ring.q_empty);
    if (tile_start > mask_from)
      masked_online_softmax<Cfg, 1, NK, true>(st, 0, s, tile_start, it.kv_end, row_pos[0], p.scale_log2);
    else
      masked_online_softmax<Cfg, 1, NK, false>(st, 0, s, tile_start, it.kv_end, row_pos[0], p.scale_log2);
    uint32_t pf[NK / 16][4];
#pragma unroll
    for (int kk = 0; kk < NK / 16; ++kk) p_fragment<T, NK>(s, kk, pf[kk]);
    wait_full(ring.v_full + pos.v.stage, pos.v.parity);
    issue_pv<Cfg, NK>(pf, ring.v(pos.v.stage), st.o[0]);
    cute::warpgroup_wait<0>();
    fence_accumulators<Cfg::D / 2>(&st.o[0][0][0]);
    warp_arrive(ring.v_empty + pos.v.stage);
    pos.v.advance();
  }
}

}  // namespace pod::sm90
#endif  // POD_WGMMA_PREFILL
