// The two-CTA POD kernel (sm_80, and head dim 256 on Hopper): one persistent launch of two CTAs per
// SM; each CTA runs prefill and decode items as the scheduler hands them out. Both item kinds
// stream K/V tiles through the same two-stage cp.async pipeline and differ only in how the four
// warps share a tile (rows vs keys) and in the epilogue. run_item also runs the decode items of the
// warp-specialized kernel (pod_kernel_sm90.cuh).
#pragma once
#include "attention_tile_sm90.cuh"
#include "merge.cuh"
#include "scheduler.cuh"
#include "tile_loader.cuh"
#include "trace.cuh"

// The Hopper configuration (TileConfig<..., kHopper = true>) is compiled into the sm_90a code of
// builds with -DPOD_WGMMA_PREFILL, the other one everywhere else; the host launches the one that
// matches the device (launch.cuh), so each pass compiles only one kernel body.
#if defined(POD_WGMMA_PREFILL) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define POD_HOPPER_PREFILL 1
constexpr bool kCompilingHopper = true;
#else
constexpr bool kCompilingHopper = false;
#endif

namespace pod {

// One item, by one team of Cfg::kThreads threads, in the shared-memory region `smem`: a query tile
// (prefill rows, or decode's 16), then the K/V ring. The two-CTA kernel runs both kinds this way;
// the warp-specialized kernel runs its decode items this way (pod_kernel_sm90.cuh).
template <class Cfg, int kKind>
__device__ __forceinline__ void run_item(const PodParams& p, const WorkItem& it, char* smem,
                                         int* s_flag, const Team<Cfg::kThreads>& team) {
  using T = typename Cfg::T;
  constexpr bool kIsDecode = kKind == kDecode;
  constexpr int kRows = kIsDecode ? Cfg::kDecodeRows : Cfg::kPrefillRows;
  constexpr int kM = kIsDecode ? 1 : Cfg::kPrefillMTiles;  // m-tiles per warp
  constexpr int kKeys = kIsDecode ? Cfg::kDecodeKeys : Cfg::kPrefillKeys;
#ifdef POD_HOPPER_PREFILL
  constexpr bool kWgmma = !kIsDecode;
  using QLayout = std::conditional_t<kWgmma, sm90::Sw128Layout<kRows>, SwzLayout<Cfg>>;
  using KVLayout = std::conditional_t<kWgmma, sm90::Sw128Layout<kKeys>, SwzLayout<Cfg>>;
#else
  constexpr bool kWgmma = false;
  using QLayout = SwzLayout<Cfg>;
  using KVLayout = SwzLayout<Cfg>;
#endif
  // fp8 decode tiles compute on K's and V's copied bytes (warp_attend), so their byte stages take
  // the whole ring (Cfg::kDecodeByteStages).
  constexpr bool kBytesOnly = Cfg::kFp8 && kIsDecode;
  constexpr int kStages = kBytesOnly ? Cfg::kDecodeByteStages : kIsDecode ? Cfg::kDecodeStages : Cfg::kPrefillStages;
  constexpr int kTileElems = kKeys * Cfg::D;
  T* sQ = reinterpret_cast<T*>(smem);
  // 16-bit caches: the K/V ring, [stage][K|V][keys][D]. fp8 caches: the ring of byte stages
  // ([stage][K|V][keys][D] bytes), after the 16-bit [K|V] tile that prefill tiles convert them
  // into (the same shared memory as the 16-bit ring). An fp8 query's bytes pass through a prefill
  // item's last stage (free until the loop refills it after its first barrier), and after the
  // byte stages in a decode item (Cfg::kDecodeBytes).
  T* sKV = sQ + kRows * Cfg::D;
  uint8_t* staged = reinterpret_cast<uint8_t*>(sKV + (kBytesOnly ? 0 : 2 * kTileElems));
  auto sK = [&](int stage) { return sKV + (Cfg::kFp8 ? 0 : 2 * stage * kTileElems); };
  auto sV = [&](int stage) { return sK(stage) + kTileElems; };
  auto stK = [&](int stage) { return staged + 2 * stage * kTileElems; };
  auto stV = [&](int stage) { return stK(stage) + kTileElems; };

  const int warp = team.warp(), lane = threadIdx.x & 31;
  const int used = it.n_tok * it.nh;
  // 16-bit decode tiles hold 8 rows per warp on the MMA's n8 side (decode_tile.cuh), the others
  // 16 rows per m-tile on m16.
  constexpr bool kSwapped = kIsDecode && !Cfg::kFp8;
  using State = std::conditional_t<kSwapped, DecodeState<Cfg>, WarpState<Cfg, kM>>;
  const DecodeWarpShare share = decode_warp_share(warp, used);
  int row_pos[kM][2];  // sequence positions of this thread's rows
#pragma unroll
  for (int mt = 0; mt < kM; ++mt) {
    if constexpr (kSwapped) decode_row_positions(it, share.row0, lane, row_pos[mt]);
    else thread_row_positions(it, kIsDecode ? 0 : Cfg::prefill_row(warp, mt), lane, row_pos[mt]);
  }
  const TileMask needs_mask = tile_mask(it, kKeys, p.window_left);

  State st;
  st.init();
  const int num_tiles = num_kv_tiles(it, kKeys);
  // One commit group per K/V tile, into its stage of the ring: waiting for tile t leaves the (up
  // to kStages - 2) newer ones in flight.
  auto load_tile = [&](int t) {
    const int tile_start = it.kv_start + t * kKeys;
    if constexpr (Cfg::kFp8)
      copy_kv_tile_fp8<Cfg, kKeys>(stK(t % kStages), stV(t % kStages), p, it, tile_start, team.tid);
    else
      load_kv_tile<Cfg, kKeys, KVLayout>(sK(t % kStages), sV(t % kStages), p, it, tile_start, team.tid);
    cp_async_commit();
  };
  if constexpr (Cfg::kFp8) {
    // The query's bytes in a commit group of their own, before the first tiles'; each thread
    // converts the chunks it copied once they land (decode tiles in the order of their scores).
    static_assert(kBytesOnly || kRows <= 2 * kKeys, "the query's bytes fit one stage");
    uint8_t* query_bytes = kBytesOnly ? stK(kStages) : stK(kStages - 1);
    copy_query_rows_fp8<Cfg>(query_bytes, p, it, kRows, team.tid);
    cp_async_commit();
    const int ahead = min(num_tiles, kStages - 1);  // every item has at least one tile
    for (int t = 0; t < ahead; ++t) load_tile(t);
    cp_async_wait_newest<kStages - 1>(ahead);
    convert_query_rows_fp8<Cfg, QLayout, kBytesOnly>(query_bytes, sQ, kRows, team.tid);
  } else {
    load_query_rows<Cfg, QLayout>(sQ, p, it, kRows, team.tid);
#pragma unroll
    for (int t = 0; t < kStages - 1; ++t)
      if (t == 0 || t < num_tiles) load_tile(t);  // every item has at least one tile
  }
  // The key loop, compiled once with the soft-cap and once without (with_softcap).
  with_softcap(p, [&](auto softcap) {
    constexpr bool kSoftcap = decltype(softcap)::value;
    for (int t = 0; t < num_tiles; ++t) {
      const int tile_start = it.kv_start + t * kKeys;
      const int ahead = t + kStages - 1;
      // Tile t landed (the newer ones may stay in flight). One barrier per tile makes it visible to
      // all and shows every thread done with tile t - 1, whose stage tile t + kStages - 1 refills.
      cp_async_wait_newest<kStages - 2>(num_tiles - 1 - t);
      if constexpr (kWgmma && !Cfg::kFp8) fence_proxy_async();
      team.sync();
      if (ahead < num_tiles) load_tile(ahead);
      const int stage = t % kStages;
      if constexpr (Cfg::kFp8 && !kBytesOnly) {
        // The barrier above also showed the 16-bit tile free (the math on tile t - 1 is done).
        convert_tile_fp8<Cfg, kKeys, KVLayout>(stK(stage), sK(stage), team.tid);
        convert_tile_fp8<Cfg, kKeys, KVLayout>(stV(stage), sV(stage), team.tid);
        if constexpr (kWgmma) fence_proxy_async();
        team.sync();
      }
      with_mask<kSoftcap>(needs_mask(tile_start), [&](auto mods) {
        using Mods = decltype(mods);
        if constexpr (kIsDecode) {
          if (warp < Cfg::kDecodeWarps) {
            if constexpr (kSwapped) {
              for (int i = 0; i < share.slices; ++i) {
                const int kw0 = (share.slice0 + i) * Cfg::kDecodeWarpKeys;
                decode_attend<Cfg, Mods>(st, sQ, sK(stage), sV(stage), share.row0, kw0, tile_start + kw0,
                                         it.kv_end, row_pos[0], p);
              }
            } else {
              // fp8: K's and V's bytes, straight from the stage, and the query in fp16 (warp_attend).
              const int kw0 = warp * Cfg::kDecodeWarpKeys;
              warp_attend<Cfg, 1, Cfg::kDecodeWarpKeys, Mods>(
                  st, sQ, reinterpret_cast<const T*>(stK(stage)), reinterpret_cast<const T*>(stV(stage)),
                  0, kw0, tile_start + kw0, it.kv_end, row_pos, p);
            }
          }
        } else if constexpr (kWgmma) {
#ifdef POD_HOPPER_PREFILL
          sm90::warpgroup_attend<Cfg, kKeys, Mods>(st, sQ, sK(stage), sV(stage), tile_start, it.kv_end,
                                                   row_pos, p);
#endif
        } else if (Cfg::prefill_row(warp, 0) < used) {  // warps whose rows are all padding skip the math
          warp_attend<Cfg, kM, kKeys, Mods>(st, sQ, sK(stage), sV(stage), Cfg::prefill_row(warp, 0), 0,
                                            tile_start, it.kv_end, row_pos, p);
        }
      });
    }
  });
  team.sync();  // the decode merge reuses the ring's shared memory

  const RowSink<Cfg> sink{p, it};
  if constexpr (kIsDecode)
    merge_decode_warps<Cfg>(st, sink, reinterpret_cast<float*>(smem), used, team);
  else
    store_warp_rows<Cfg>(st, sink, warp, 0, used);
  if (it.slot >= 0) finish_split<Cfg>(p, it, used, reinterpret_cast<float*>(smem), s_flag, team);
}

// Where a team's leader hands the item it took to the rest of the team.
struct ItemSlot {
  WorkItem item;
  int kind, index, flag;
};

// A team's item loop: its leader takes items with take(&kind) (-1: none left) and the team runs
// them. kDecodeOnly: a team that only ever takes decode items (the prefill path is not compiled in).
template <class Cfg, bool kDecodeOnly, class Take>
__device__ __forceinline__ void run_team_items(const PodParams& p, char* smem, ItemSlot& slot,
                                               const Team<Cfg::kThreads>& team, Take&& take) {
  while (true) {
    if (team.leader()) {
      slot.index = take(&slot.kind);
      if (slot.index >= 0)
        slot.item = plan_item(p.plan, slot.index);
    }
    team.sync();
    if (slot.index < 0) break;
    // A register copy: reading the item from shared memory in the key loop measured 25% slower.
    const WorkItem it = slot.item;
    const int index = slot.index;
    const uint32_t start = trace_clock();
    with_item_scales<Cfg>(p, it, [&](const PodParams& ip) {
      if (kDecodeOnly || slot.kind == kDecode)
        run_item<Cfg, kDecode>(ip, it, smem, &slot.flag, team);
      else if constexpr (!kDecodeOnly)
        run_item<Cfg, kPrefill>(ip, it, smem, &slot.flag, team);
    });
    trace_item(p, index, start, team.leader());
    team.sync();  // shared memory and the slot are reused by the next item
  }
}

// The persistent loop of the two-CTA kernel: the whole CTA is one team that takes both kinds.
template <class Cfg>
__device__ __forceinline__ void run_items(const PodParams& p) {
  extern __shared__ __align__(128) char smem_raw[];
  char* smem = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);
  __shared__ ItemSlot slot;
  Scheduler sched{p.plan, p.counters, p.ctas_per_sm};
  if (threadIdx.x == 0) sched.start();
  run_team_items<Cfg, false>(p, smem, slot, Team<Cfg::kThreads>{int(threadIdx.x), 0},
                             [&](int* kind) { return sched.next(kind); });
  if (threadIdx.x == 0) sched.finish();
}

template <class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads, 2) pod_attention_kernel(const PodParams p) {
  if constexpr (Cfg::kHopper == kCompilingHopper)
    run_items<Cfg>(p);
  else
    __trap();  // the host never launches a configuration this pass did not compile
}

}  // namespace pod
