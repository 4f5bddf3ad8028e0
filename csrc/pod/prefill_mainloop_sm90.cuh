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
// An fp8 cache adds kStagedStages stages of bytes ([K|V][keys][D]) that the producer copies into
// and converts from (tile_loader.cuh).
template <class Cfg, int kKStages_, int kVStages_, int kStagedStages_ = 0>
struct PrefillRing {
  using T = typename Cfg::T;
  static constexpr int kKStages = kKStages_, kVStages = kVStages_, kStagedStages = kStagedStages_;
  static constexpr int kKeys = Cfg::kPrefillKeys;
  static constexpr int kTileElems = kKeys * Cfg::D;
  static constexpr size_t kBytes = sizeof(T) * (Cfg::D * Cfg::kPrefillRows + (kKStages + kVStages) * kTileElems) +
                                   size_t(kStagedStages) * 2 * kTileElems;
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
  __device__ __forceinline__ uint8_t* staged_k(int stage) const {
    return reinterpret_cast<uint8_t*>(v(kVStages)) + 2 * stage * kTileElems;
  }
  __device__ __forceinline__ uint8_t* staged_v(int stage) const { return staged_k(stage) + kTileElems; }

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

// produce_item for an fp8 cache: each tile's bytes are copied into a staging stage while the
// previous tile is converted into the 16-bit rings (by the threads that copied it, so no barrier
// between copy and conversion); the conversions are plain stores, published by a proxy fence
// and plain arrivals.
template <class Cfg, class Ring>
__device__ __forceinline__ void produce_item_fp8(const PodParams& p, const WorkItem& it, const Ring& ring,
                                                 RingPositions<Ring>& pos, int tid, int producer_barrier) {
  static_assert(Ring::kStagedStages == 2, "one tile converted while the next is copied");
  const int num_tiles = num_kv_tiles(it, Ring::kKeys);
  auto copy = [&](int t) {
    copy_kv_tile_fp8<Cfg, Ring::kKeys>(ring.staged_k(t & 1), ring.staged_v(t & 1), p, it,
                                       it.kv_start + t * Ring::kKeys, tid);
    cp_async_commit();
  };
  auto deliver = [&](int t, bool newest) {  // newest: no later tile's copies are in flight
    if (newest) cp_async_wait<0>();
    else cp_async_wait<1>();
    ring.k_empty[pos.k.stage].wait(pos.k.parity ^ 1);
    ring.v_empty[pos.v.stage].wait(pos.v.parity ^ 1);
    convert_kv_tile_fp8<Cfg, Ring::kKeys, Sw128Layout<Ring::kKeys>>(
        ring.staged_k(t & 1), ring.staged_v(t & 1), ring.k(pos.k.stage), ring.v(pos.v.stage), tid);
    fence_proxy_async();
    ring.k_full[pos.k.stage].arrive();
    ring.v_full[pos.v.stage].arrive();
    pos.k.advance();
    pos.v.advance();
  };
  // The query's bytes pass through staging stage 1, which tile 1's copies refill once every
  // producer thread has converted its part (producer_barrier, the 128 producer threads').
  static_assert(Cfg::kPrefillRows <= 2 * Ring::kKeys, "the query's bytes fit one staging stage");
  copy_query_rows_fp8<Cfg>(ring.staged_k(1), p, it, Cfg::kPrefillRows, tid);
  cp_async_commit();
  copy(0);
  cp_async_wait<1>();
  convert_query_rows_fp8<Cfg, Sw128Layout<Cfg::kPrefillRows>>(ring.staged_k(1), ring.q, Cfg::kPrefillRows, tid);
  fence_proxy_async();
  ring.q_full->arrive();
  named_barrier_sync(producer_barrier, 128);
  for (int t = 1; t < num_tiles; ++t) {
    copy(t);
    deliver(t - 1, false);
  }
  deliver(num_tiles - 1, true);
}

// The producer's part of one item (all 128 producer threads; tid is a thread's index among them):
// the query rows (its caller waited for q_empty), then each tile's K and V, copied together (one
// page lookup) once both rings have a free stage.
template <class Cfg, class Ring>
__device__ __forceinline__ void produce_item(const PodParams& p, const WorkItem& it, const Ring& ring,
                                             RingPositions<Ring>& pos, int tid) {
  load_query_rows<Cfg, Sw128Layout<Cfg::kPrefillRows>>(ring.q, p, it, Cfg::kPrefillRows, tid);
  ring.q_full->arrive_after_copies();
  const int num_tiles = num_kv_tiles(it, Ring::kKeys);
  for (int t = 0; t < num_tiles; ++t) {
    ring.k_empty[pos.k.stage].wait(pos.k.parity ^ 1);
    ring.v_empty[pos.v.stage].wait(pos.v.parity ^ 1);
    load_kv_tile<Cfg, Ring::kKeys, Sw128Layout<Ring::kKeys>>(ring.k(pos.k.stage), ring.v(pos.v.stage), p, it,
                                                             it.kv_start + t * Ring::kKeys, tid);
    ring.k_full[pos.k.stage].arrive_after_copies();
    ring.v_full[pos.v.stage].arrive_after_copies();
    pos.k.advance();
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
// tile, into st (its warp w holds rows 64 * slice + 16 * w). Per tile t: issue S_t = Q K_t and
// O += P_{t-1} V_{t-1}, free K_t once S_t is done, run S_t's softmax while P V runs, then free V_{t-1}.
template <class Cfg, class Ring, bool kSoftcap>
__device__ __forceinline__ void consume_item(const PodParams& p, const WorkItem& it, const Ring& ring,
                                             RingPositions<Ring>& pos, int slice,
                                             WarpState<Cfg, 1>& st, const int (&row_pos)[1][2]) {
  using T = typename Cfg::T;
  constexpr int NK = Ring::kKeys;
  const int num_tiles = num_kv_tiles(it, NK);
  const TileMask needs_mask = tile_mask(it, NK, p.window_left);
  float s[NK / 8][4];
  uint32_t pf[NK / 16][4];  // P_{t-1}, the A operand of the P V in flight
  float alpha[2];
  auto softmax = [&](int tile_start) {
    with_mask<kSoftcap>(needs_mask(tile_start), [&](auto mods) {
      online_softmax<Cfg, 1, NK, decltype(mods)>(st, 0, s, tile_start, it.kv_end, row_pos[0], p, alpha);
    });
  };
  auto pack_p = [&] {
#pragma unroll
    for (int kk = 0; kk < NK / 16; ++kk) p_fragment<T, NK>(s, kk, pf[kk]);
  };
  auto issue_scores = [&] {
    wait_full(ring.k_full + pos.k.stage, pos.k.parity);
    issue_qk<Cfg, NK>(ring.q, slice, ring.k(pos.k.stage), s);
  };
  auto issue_values = [&] {
    wait_full(ring.v_full + pos.v.stage, pos.v.parity);
    issue_pv<Cfg, NK>(pf, ring.v(pos.v.stage), st.o[0]);
  };
  auto scores_done = [&](int t) {  // after S_t's wait: K_t (and, after the last tile, Q) are free
    fence_accumulators<NK / 2>(&s[0][0]);
    warp_arrive(ring.k_empty + pos.k.stage);
    pos.k.advance();
    if (t == num_tiles - 1) warp_arrive(ring.q_empty);
  };
  auto values_done = [&] {
    fence_accumulators<Cfg::D / 2>(&st.o[0][0][0]);
    warp_arrive(ring.v_empty + pos.v.stage);
    pos.v.advance();
  };

  issue_scores();
  cute::warpgroup_wait<0>();
  scores_done(0);
  softmax(it.kv_start);  // o is still zero: alpha is not needed
  pack_p();
  for (int t = 1; t < num_tiles; ++t) {
    issue_scores();
    issue_values();
    cute::warpgroup_wait<1>();  // S_t is done; P_{t-1} V_{t-1} may still run
    scores_done(t);
    softmax(it.kv_start + t * NK);
    cute::warpgroup_wait<0>();
    values_done();
    // A warp none of whose rows' max moved skips the rescale (every factor is exactly 1).
    if (__any_sync(0xffffffff, alpha[0] != 1.f || alpha[1] != 1.f)) rescale_o<Cfg, 1>(st, 0, alpha);
    pack_p();
  }
  issue_values();
  cute::warpgroup_wait<0>();
  values_done();
}

}  // namespace pod::sm90
#endif  // POD_WGMMA_PREFILL
