// The fused POD kernel: one persistent launch; each CTA runs prefill and decode items as the
// scheduler hands them out. Both item kinds stream K/V tiles through the same two-stage cp.async
// pipeline and differ only in how the four warps share a tile (rows vs keys) and in the epilogue.
#pragma once
#include "attention_tile_sm90.cuh"
#include "merge.cuh"
#include "scheduler.cuh"
#include "tile_loader.cuh"

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

#if defined(POD_HOPPER_PREFILL) && POD_SM90_INTRA_WG_OVERLAP
// The K/V loop of a Hopper prefill item with FA3's intra-warpgroup overlap: iteration t issues
// S_{t+1} = Q K_{t+1}^T and then P_t V_t back to back, and computes softmax_{t+1} (m-tile 0 as soon
// as its S is done) while the rest runs; the rescale of o that softmax_{t+1} asks for waits until
// P_t V_t has retired. Nothing is in flight across the loop's back edge (ptxas serialises wgmma
// otherwise). K and V are copied one iteration ahead of their use, in separate stages: K_{t+2} and
// V_{t+1} in iteration t.
template <class Cfg, class KStage, class VStage>
__device__ __forceinline__ void hopper_prefill_loop(const PodParams& p, const WorkItem& it,
                                                    WarpState<Cfg, Cfg::kPrefillMTiles>& st,
                                                    const typename Cfg::T* sQ, KStage sK, VStage sV,
                                                    const int (&row_pos)[Cfg::kPrefillMTiles][2],
                                                    int mask_from, int num_tiles) {
  constexpr int M = Cfg::kPrefillMTiles, NK = Cfg::kPrefillKeys;
  using Layout = sm90::Sw128Layout<NK>;
  float s[M][NK / 8][4];
  uint32_t pv[M][NK / 16][4];  // P of the tile whose P V is issued next
  float alpha[M][2];           // and the rescale of o that must precede it
  // S_t of m-tile mt -> P_t (into s), alpha, running max and sum.
  auto softmax = [&](int t, int mt) {
    const int key0 = it.kv_start + t * NK;
    sm90::fence_accumulators<NK / 2>(&s[mt][0][0]);
    if (key0 > mask_from)
      online_softmax<Cfg, M, NK, true>(st, mt, s[mt], key0, it.kv_end, row_pos[mt], p.scale_log2, alpha[mt]);
    else
      online_softmax<Cfg, M, NK, false>(st, mt, s[mt], key0, it.kv_end, row_pos[mt], p.scale_log2, alpha[mt]);
  };
  // Each m-tile's softmax starts as soon as its own S is done; kPending more groups may still run
  // (the other S, and P V when called in the loop). Groups retire in order of issue.
  auto softmax_as_ready = [&](int t, auto pending) {
    constexpr int kPending = decltype(pending)::value;
    if constexpr (M == 2) {
      cute::warpgroup_wait<kPending + 1>();
      softmax(t, 0);
      cute::warpgroup_wait<kPending>();
      softmax(t, 1);
    } else {
      cute::warpgroup_wait<kPending>();
      softmax(t, 0);
    }
  };
  auto pack_p = [&] {
#pragma unroll
    for (int mt = 0; mt < M; ++mt)
#pragma unroll
      for (int kk = 0; kk < NK / 16; ++kk) p_fragment<typename Cfg::T, NK>(s[mt], kk, pv[mt][kk]);
  };
  auto rescale_and_issue_pv = [&](int t) {  // O = alpha O + P_t V_t, not waited for
#pragma unroll
    for (int mt = 0; mt < M; ++mt) {
      sm90::fence_accumulators<Cfg::D / 2>(&st.o[mt][0][0]);
      rescale_o<Cfg, M>(st, mt, alpha[mt]);
      sm90::issue_pv<Cfg, NK>(pv[mt], sV(t & 1), st.o[mt]);
    }
  };
  auto retire_pv = [&] {
    cute::warpgroup_wait<0>();
#pragma unroll
    for (int mt = 0; mt < M; ++mt) sm90::fence_accumulators<Cfg::D / 2>(&st.o[mt][0][0]);
  };

  // The caller committed Q and K_0; V_0 and K_1 follow as the next group.
  load_kv_tile<Cfg, NK, Layout, false, true>(sK(0), sV(0), p, it, it.kv_start);
  if (num_tiles > 1) load_kv_tile<Cfg, NK, Layout, true, false>(sK(1), sV(1), p, it, it.kv_start + NK);
  cp_async_commit();
  cp_async_wait<1>();
  fence_proxy_async();
  __syncthreads();  // Q and K_0 have landed
  sm90::issue_scores<Cfg, NK>(sQ, sK(0), s);
  softmax_as_ready(0, std::integral_constant<int, 0>{});
  pack_p();
  for (int t = 0; t + 1 < num_tiles; ++t) {
    cp_async_wait<0>();
    fence_proxy_async();
    // V_t and K_{t+1} have landed; the stages of V_{t-1} and K_t are no longer read (P_{t-1} V_{t-1}
    // and S_t retired last iteration), so V_{t+1} and K_{t+2} go there.
    __syncthreads();
    load_kv_tile<Cfg, NK, Layout, false, true>(sK(0), sV((t + 1) & 1), p, it, it.kv_start + (t + 1) * NK);
    if (t + 2 < num_tiles)
      load_kv_tile<Cfg, NK, Layout, true, false>(sK(t & 1), sV(0), p, it, it.kv_start + (t + 2) * NK);
    cp_async_commit();
    sm90::issue_scores<Cfg, NK>(sQ, sK((t + 1) & 1), s);      // S_{t+1}: M groups
    rescale_and_issue_pv(t);                                 // P_t V_t: M more, run under...
    softmax_as_ready(t + 1, std::integral_constant<int, M>{});  // ...softmax_{t+1}
    retire_pv();
    pack_p();
  }
  cp_async_wait<0>();
  fence_proxy_async();
  __syncthreads();  // V of the last tile has landed
  rescale_and_issue_pv(num_tiles - 1);
  retire_pv();
}
#endif

template <class Cfg, int kKind>
__device__ __forceinline__ void run_item(const PodParams& p, const WorkItem& it, char* smem,
                                         int* s_flag) {
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
  T* sQ = reinterpret_cast<T*>(smem);
  T* sKV = sQ + Cfg::kQElems;  // [stage][K|V][keys][D]
  auto sK = [&](int stage) { return sKV + (2 * stage) * Cfg::kKVElems; };
  auto sV = [&](int stage) { return sKV + (2 * stage + 1) * Cfg::kKVElems; };

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int used = it.n_tok * it.nh;
  int row_pos[kM][2];  // sequence positions of this thread's rows
#pragma unroll
  for (int mt = 0; mt < kM; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r)
      row_pos[mt][r] =
          it.q_pos0 + ((kIsDecode ? 0 : Cfg::prefill_row(warp, mt)) + (lane >> 2) + 8 * r) / it.nh;
  // Tiles starting past this need the mask (causal diagonal or the end of the key range).
  const int mask_from = min(it.kv_end, it.q_pos0 + 1) - kKeys;

  WarpState<Cfg, kM> st;
  st.init();
  const int num_tiles = (it.kv_end - it.kv_start + kKeys - 1) / kKeys;
  load_query_rows<Cfg, QLayout>(sQ, p, it, kRows);
#if defined(POD_HOPPER_PREFILL) && POD_SM90_INTRA_WG_OVERLAP
  if constexpr (kWgmma) {
    load_kv_tile<Cfg, kKeys, KVLayout, true, false>(sK(0), sV(0), p, it, it.kv_start);
    cp_async_commit();
    hopper_prefill_loop<Cfg>(p, it, st, sQ, sK, sV, row_pos, mask_from, num_tiles);
  } else
#endif
  {
  load_kv_tile<Cfg, kKeys, KVLayout>(sK(0), sV(0), p, it, it.kv_start);
  cp_async_commit();
  for (int t = 0; t < num_tiles; ++t) {
    const int tile_start = it.kv_start + t * kKeys;
    if (t + 1 < num_tiles) {
      load_kv_tile<Cfg, kKeys, KVLayout>(sK((t + 1) & 1), sV((t + 1) & 1), p, it, tile_start + kKeys);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    if constexpr (kWgmma) fence_proxy_async();
    __syncthreads();
    const int stage = t & 1;
    const bool masked = tile_start > mask_from;
    if constexpr (kIsDecode) {
      if (warp < Cfg::kDecodeWarps) {
        const int kw0 = warp * Cfg::kDecodeWarpKeys;
        if (masked)
          warp_attend<Cfg, 1, Cfg::kDecodeWarpKeys, true>(st, sQ, sK(stage), sV(stage), 0, kw0,
                                                          tile_start + kw0, it.kv_end, row_pos, p.scale_log2);
        else
          warp_attend<Cfg, 1, Cfg::kDecodeWarpKeys, false>(st, sQ, sK(stage), sV(stage), 0, kw0,
                                                           tile_start + kw0, it.kv_end, row_pos, p.scale_log2);
      }
    } else if constexpr (kWgmma) {
#ifdef POD_HOPPER_PREFILL
      if (masked)
        sm90::warpgroup_attend<Cfg, kKeys, true>(st, sQ, sK(stage), sV(stage), tile_start,
                                                 it.kv_end, row_pos, p.scale_log2);
      else
        sm90::warpgroup_attend<Cfg, kKeys, false>(st, sQ, sK(stage), sV(stage), tile_start,
                                                  it.kv_end, row_pos, p.scale_log2);
#endif
    } else if (Cfg::prefill_row(warp, 0) < used) {  // warps whose rows are all padding skip the math
      const int row0 = Cfg::prefill_row(warp, 0);
      if (masked)
        warp_attend<Cfg, kM, kKeys, true>(st, sQ, sK(stage), sV(stage), row0, 0, tile_start,
                                          it.kv_end, row_pos, p.scale_log2);
      else
        warp_attend<Cfg, kM, kKeys, false>(st, sQ, sK(stage), sV(stage), row0, 0, tile_start,
                                           it.kv_end, row_pos, p.scale_log2);
    }
    __syncthreads();  // the stage is refilled next iteration
  }
  }

  const RowSink<Cfg> sink{p, it};
  if constexpr (kIsDecode)
    merge_decode_warps<Cfg>(st, sink, reinterpret_cast<float*>(smem), used, p.scale_log2);
  else
    store_warp_rows<Cfg>(st, sink, warp, used, p.scale_log2);
  if (it.slot >= 0) finish_split<Cfg>(p, it, used, s_flag);
}

// The persistent loop: pull items from the scheduler until both queues are drained.
template <class Cfg>
__device__ __forceinline__ void run_items(const PodParams& p) {
  extern __shared__ __align__(128) char smem_raw[];
  char* smem = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);
  __shared__ WorkItem s_item;
  __shared__ int s_kind, s_index, s_flag;
  Scheduler sched{p.plan, p.counters, p.ctas_per_sm};
  if (threadIdx.x == 0) sched.start();
  while (true) {
    if (threadIdx.x == 0) {
      s_index = sched.next(&s_kind);
      if (s_index >= 0)
        s_item = reinterpret_cast<const WorkItem*>(p.plan + PLAN_HEADER_INTS)[s_index];
    }
    __syncthreads();
    if (s_index < 0) break;
    // A register copy: reading the item from shared memory in the key loop measured 25% slower.
    const WorkItem it = s_item;
    if (s_kind == kDecode)
      run_item<Cfg, kDecode>(p, it, smem, &s_flag);
    else
      run_item<Cfg, kPrefill>(p, it, smem, &s_flag);
    __syncthreads();  // shared memory and s_item are reused by the next item
  }
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
