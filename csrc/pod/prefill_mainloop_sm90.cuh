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
// An fp8 cache keeps Q and K as e4m3 bytes, which wgmma reads, and converts V alone: its bytes go
// through kStagedStages staging stages ([keys][D] bytes, tile_loader.cuh) into the 16-bit V ring.
template <class Cfg, int kKStages_, int kVStages_, int kStagedStages_ = 0>
struct PrefillRing {
  using T = typename Cfg::T;
  static constexpr int kKStages = kKStages_, kVStages = kVStages_, kStagedStages = kStagedStages_;
  static constexpr int kKeys = Cfg::kPrefillKeys;
  static constexpr int kTileElems = kKeys * Cfg::D;
  static constexpr size_t kQKElemBytes = Cfg::kFp8 ? 1 : sizeof(T);
  static constexpr size_t kQBytes = kQKElemBytes * Cfg::D * Cfg::kPrefillRows;
  static constexpr size_t kKTileBytes = kQKElemBytes * kTileElems;
  static constexpr size_t kVTileBytes = sizeof(T) * kTileElems;
  static constexpr size_t kBytes =
      kQBytes + kKStages * kKTileBytes + kVStages * kVTileBytes + size_t(kStagedStages) * kTileElems;
  static constexpr int kConsumerWarps = 8;

  T* q;               // [kPrefillRows x D], SW128 (fp8: bytes); the K ring and the V ring follow it
  MBarrier* q_full;   // the item's query rows landed (128 producer copies + the item hand-off)
  MBarrier* q_empty;  // both consumers are done reading them (one arrival per consumer warp)
  MBarrier* k_full;   // [kKStages]: the stage's tile landed (one arrival per producer thread)
  MBarrier* k_empty;  // [kKStages]: every consumer warp is done with it
  MBarrier* v_full;   // [kVStages], likewise
  MBarrier* v_empty;

  __device__ __forceinline__ char* at(size_t offset) const { return reinterpret_cast<char*>(q) + offset; }
  __device__ __forceinline__ T* k(int stage) const { return reinterpret_cast<T*>(at(kQBytes + stage * kKTileBytes)); }
  __device__ __forceinline__ T* v(int stage) const {
    return reinterpret_cast<T*>(at(kQBytes + kKStages * kKTileBytes + stage * kVTileBytes));
  }
  __device__ __forceinline__ uint8_t* staged_v(int stage) const {
    return reinterpret_cast<uint8_t*>(at(kQBytes + kKStages * kKTileBytes + kVStages * kVTileBytes +
                                         size_t(stage) * kTileElems));
  }

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

// produce_item for an fp8 cache: the query's and each K tile's bytes are copied straight into the
// tiles wgmma reads (their fp8_swz layout is the canonical K-major one), completing on the ring's
// barriers as in bf16; each V tile's bytes go to a staging stage while the previous V tile is
// converted into the 16-bit V ring by the threads that copied it (no barrier between copy and
// conversion), published by a proxy fence and plain arrivals.
template <class Cfg, class Ring>
__device__ __forceinline__ void produce_item_fp8(const PodParams& p, const WorkItem& it, const Ring& ring,
                                                 RingPositions<Ring>& pos, int tid) {
  static_assert(Ring::kStagedStages == 2, "one V tile converted while the next is copied");
  const int num_tiles = num_kv_tiles(it, Ring::kKeys);
  copy_query_rows_fp8<Cfg>(reinterpret_cast<uint8_t*>(ring.q), p, it, Cfg::kPrefillRows, tid);
  ring.q_full->arrive_after_copies();
  auto deliver_v = [&](int t, bool newest) {  // newest: no later tile's copies are in flight
    if (newest) cp_async_wait<0>();
    else cp_async_wait<1>();
    ring.v_empty[pos.v.stage].wait(pos.v.parity ^ 1);
    convert_tile_fp8<Cfg, Ring::kKeys, Sw128Layout<Ring::kKeys>>(ring.staged_v(t & 1), ring.v(pos.v.stage), tid);
    fence_proxy_async();
    ring.v_full[pos.v.stage].arrive();
    pos.v.advance();
  };
  for (int t = 0; t < num_tiles; ++t) {
    ring.k_empty[pos.k.stage].wait(pos.k.parity ^ 1);
    copy_kv_tile_fp8<Cfg, Ring::kKeys>(reinterpret_cast<uint8_t*>(ring.k(pos.k.stage)), ring.staged_v(t & 1), p, it,
                                       it.kv_start + t * Ring::kKeys, tid);
    ring.k_full[pos.k.stage].arrive_after_copies();
    cp_async_commit();
    pos.k.advance();
    if (t > 0) deliver_v(t - 1, false);
  }
  deliver_v(num_tiles - 1, true);
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
    if constexpr (Cfg::kFp8) issue_qk_e4m3<Cfg, NK>(ring.q, slice, ring.k(pos.k.stage), s);
    else issue_qk<Cfg, NK>(ring.q, slice, ring.k(pos.k.stage), s);
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
