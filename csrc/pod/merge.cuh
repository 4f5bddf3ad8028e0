// Where finished rows go, and how partial results are combined: across the warps of a decode tile
// (shared memory) and across the KV-splits of a work item (workspace, merged by the last split).
#pragma once
#include <cmath>
#include "decode_tile.cuh"

namespace pod {

// The query head of an item's row; rows are token-major, heads of the group minor.
__device__ __forceinline__ int row_head(const PodParams& p, const WorkItem& it, int row) {
  return it.kv_head * p.group + it.h0 + row % it.nh;
}

// Address of (row, column d) of an item in `out`.
template <typename T>
__device__ __forceinline__ T* out_at(const PodParams& p, const WorkItem& it, int row, int d) {
  return static_cast<T*>(p.out) + (it.q_start + row / it.nh) * p.o_stride_tok +
         row_head(p, it, row) * p.o_stride_head + d;
}

// The attention sink of an item's row in log2 units, or -inf without sinks.
__device__ __forceinline__ float sink_log2(const PodParams& p, const WorkItem& it, int row) {
  if (p.sinks == nullptr) return -INFINITY;
  const int h = row_head(p, it, row);
  float sink;
  if (p.sinks_dtype == kSinksBf16) sink = __bfloat162float(static_cast<const __nv_bfloat16*>(p.sinks)[h]);
  else if (p.sinks_dtype == kSinksHalf) sink = __half2float(static_cast<const __half*>(p.sinks)[h]);
  else sink = static_cast<const float*>(p.sinks)[h];
  return sink * 1.4426950408889634f;  // log2(e)
}

// Two output values at dst (an address in `out`, out_at): as T, or for an fp8 cache (whose math
// runs in fp16) in the model's dtype.
template <class Cfg>
__device__ __forceinline__ void store_out2(const PodParams& p, uint32_t* dst, float v0, float v1) {
  using T = typename Cfg::T;
  if constexpr (Cfg::kFp8)
    *dst = p.out_bf16 ? pack2<__nv_bfloat16>(v0, v1) : pack2<__half>(v0, v1);
  else
    *dst = pack2<T>(v0, v1);
}

// Writes normalised rows of an item: to `out` (store_out2) when the item is unsplit, else to its
// partial-output rows in the fp32 workspace together with the row's log2-sum-exp.
template <class Cfg>
struct RowSink {
  const PodParams& p;
  const WorkItem& it;

  __device__ __forceinline__ void put(int r, int d, float v0, float v1) const {
    if (it.slot >= 0) {
      *reinterpret_cast<float2*>(p.partial_o + int64_t(it.slot + r) * Cfg::D + d) = make_float2(v0, v1);
    } else if (d < p.head_dim) {
      store_out2<Cfg>(p, reinterpret_cast<uint32_t*>(out_at<typename Cfg::T>(p, it, r, d)), v0, v1);
    }
  }
  __device__ __forceinline__ void put_lse(int r, float lse) const {
    if (it.slot >= 0) p.partial_lse[it.slot + r] = lse;
  }
  // A row's sink joins its denominator where the row is written whole, not in a KV-split's part
  // (the split merge adds it once).
  __device__ __forceinline__ float sink(int r) const { return it.slot >= 0 ? -INFINITY : sink_log2(p, it, r); }
};

// Prefill: each warp writes its own rows straight from registers; the warp's m-tile mt holds rows
// Cfg::prefill_row(warp, mt0 + mt) (mt0: the first m-tile of the item this warp state covers).
template <class Cfg, int M>
__device__ __forceinline__ void store_warp_rows(WarpState<Cfg, M>& st, const RowSink<Cfg>& sink,
                                                int warp, int mt0, int used) {
  const int lane = threadIdx.x & 31;
  float lse[M][2], sinks[M][2];
#pragma unroll
  for (int mt = 0; mt < M; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = Cfg::prefill_row(warp, mt0 + mt) + (lane >> 2) + 8 * r;
      sinks[mt][r] = row < used ? sink.sink(row) : -INFINITY;
    }
  st.finalize(sink.p.scale_log2, lse, sinks, sink.p.out_scale);
#pragma unroll
  for (int mt = 0; mt < M; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = Cfg::prefill_row(warp, mt0 + mt) + (lane >> 2) + 8 * r;
      if (row >= used) continue;
#pragma unroll
      for (int j = 0; j < Cfg::D / 8; ++j)
        sink.put(row, 8 * j + 2 * (lane & 3), st.o[mt][j][2 * r], st.o[mt][j][2 * r + 1]);
      if ((lane & 3) == 0) sink.put_lse(row, lse[mt][r]);
    }
}

// Decode: the warps hold the same rows over different keys; each computing warp puts its
// normalised rows and their log2-sum-exp into shared memory (which the team has finished using
// for tiles), s_o [warp][row][D] and s_lse [warp][row], and merge_decode_warps combines them.
// An fp8 cache's warp state (warp_attend): rows on the m16 side, dims permuted by its P V.
template <class Cfg>
__device__ __forceinline__ void stage_decode_rows(WarpState<Cfg, 1>& st, float* s_o, float* s_lse,
                                                  float scale_log2, float out_scale) {
  static_assert(Cfg::kFp8, "16-bit caches decode with DecodeState");
  constexpr int D = Cfg::D;
  const int lane = threadIdx.x & 31;
  float lse[1][2];
  const float no_sinks[1][2] = {{-INFINITY, -INFINITY}};
  st.finalize(scale_log2, lse, no_sinks, out_scale);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = (lane >> 2) + 8 * r;
    // Column n of n-tile 4q + i holds dim 4 (8q + n) + i, so lane t's columns 2t and 2t + 1 of
    // n-tiles 4q .. 4q + 3 are dims 32q + 8t .. 32q + 8t + 7.
#pragma unroll
    for (int q = 0; q < D / 32; ++q)
#pragma unroll
      for (int e = 0; e < 2; ++e)
        *reinterpret_cast<float4*>(s_o + row * D + 32 * q + 8 * (lane & 3) + 4 * e) =
            make_float4(st.o[0][4 * q][2 * r + e], st.o[0][4 * q + 1][2 * r + e],
                        st.o[0][4 * q + 2][2 * r + e], st.o[0][4 * q + 3][2 * r + e]);
    if ((lane & 3) == 0) s_lse[row] = lse[0][r];
  }
}
// A 16-bit cache's (decode_tile.cuh): 8 rows from row0, on the n8 side.
template <class Cfg>
__device__ __forceinline__ void stage_decode_rows(DecodeState<Cfg>& st, float* s_o, float* s_lse,
                                                  int row0, float scale_log2) {
  constexpr int D = Cfg::D;
  const int lane = threadIdx.x & 31, g = lane >> 2;
  float lse[2];
  st.finalize(scale_log2, lse);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = row0 + 2 * (lane & 3) + r;
#pragma unroll
    for (int j = 0; j < D / 16; ++j) {
      s_o[row * D + 16 * j + g] = st.o[j][r];
      s_o[row * D + 16 * j + g + 8] = st.o[j][2 + r];
    }
    if (g == 0) s_lse[row] = lse[r];
  }
}

// Combines the decode warps' rows and writes them with all the team's threads.
template <class Cfg, class State, class Team>
__device__ __forceinline__ void merge_decode_warps(State& st, const RowSink<Cfg>& sink,
                                                   float* scratch, int used, const Team& team) {
  constexpr int D = Cfg::D, R = Cfg::kDecodeRows;
  float* s_o = scratch;                           // [kDecodeWarps][R][D]
  float* s_lse = scratch + Cfg::kWarps * R * D;   // [kDecodeWarps][R]
  const int warp = team.warp();
  if (warp < Cfg::kDecodeWarps) {
    if constexpr (Cfg::kFp8)
      stage_decode_rows<Cfg>(st, s_o + warp * R * D, s_lse + warp * R, sink.p.scale_log2, sink.p.out_scale);
    else
      stage_decode_rows<Cfg>(st, s_o + warp * R * D, s_lse + warp * R, decode_warp_share(warp, used).row0,
                             sink.p.scale_log2);
  }
  // The warps that hold a row: all of them, or (16-bit caches, items over 8 rows) those of its half.
  auto holds = [&](int w, int row) { return Cfg::kFp8 || decode_warp_share(w, used).row0 == (row & ~7); };
  team.sync();
  for (int idx = team.tid; idx < used * (D / 2); idx += Team::kThreads) {
    const int row = idx / (D / 2), d = (idx % (D / 2)) * 2;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < Cfg::kDecodeWarps; ++w)
      if (holds(w, row)) mx = fmaxf(mx, s_lse[w * R + row]);
    // A row may see no key in a KV-split outside its sliding window: then every warp's lse is -inf.
    const float base = mx == -INFINITY ? 0.f : mx;
    float a0 = 0.f, a1 = 0.f, wsum = 0.f;
#pragma unroll
    for (int w = 0; w < Cfg::kDecodeWarps; ++w) {
      if (!holds(w, row)) continue;
      const float wt = exp2f(s_lse[w * R + row] - base);  // empty warps: exp2(-inf) = 0
      const float2 v = *reinterpret_cast<const float2*>(s_o + (w * R + row) * D + d);
      a0 += wt * v.x;
      a1 += wt * v.y;
      wsum += wt;
    }
    const float inv = inverse_denominator(wsum, mx, sink.sink(row));
    sink.put(row, d, a0 * inv, a1 * inv);
    if (d == 0) sink.put_lse(row, wsum > 0.f ? mx + __log2f(wsum) : -INFINITY);
  }
}

// After a team wrote its split's partial rows: count the split in; the team that completes the
// group combines all splits into `out` and re-zeroes the counter (so the next launch, or a CUDA
// graph replay, starts clean without a memset). `scratch` (2 * used floats) and `s_flag` are the
// team's own shared memory, free by now.
template <class Cfg, class Team>
__device__ __forceinline__ void finish_split(const PodParams& p, const WorkItem& it, int used,
                                             float* scratch, int* s_flag, const Team& team) {
  constexpr int D = Cfg::D, kThreads = Team::kThreads;
  __threadfence();
  team.sync();
  if (team.leader()) {
    const int done = atomicAdd(p.counters + kCtrMerge + it.merge_id, 1);
    *s_flag = done == it.num_splits - 1;
    if (*s_flag) p.counters[kCtrMerge + it.merge_id] = 0;
  }
  team.sync();
  if (!*s_flag) return;
  __threadfence();
  // The partials come from L2, so the merge is a chain of L2 round trips unless each thread keeps
  // many independent loads in flight (the running-max form waited once per split and column
  // group: ~30 us for two 128-row splits). First each row's max log-sum-exp and normaliser...
  const int ns = it.num_splits;
  const float* lse = p.partial_lse + it.slot_base;
  float* s_max = scratch;
  float* s_inv = scratch + used;
  for (int row = team.tid; row < used; row += kThreads) {
    // The last split holds the row's own key, so mx is finite; a split outside the row's sliding
    // window has lse -inf and weight 0.
    float mx = -INFINITY;
#pragma unroll 8
    for (int s = 0; s < ns; ++s) mx = fmaxf(mx, __ldcg(lse + s * used + row));
    float sum = 0.f;
#pragma unroll 8
    for (int s = 0; s < ns; ++s) sum += exp2f(__ldcg(lse + s * used + row) - mx);
    s_max[row] = mx;
    s_inv[row] = inverse_denominator(sum, mx, sink_log2(p, it, row));
  }
  team.sync();
  // ...then the weighted sum, kUnits column groups of four per thread against kBatch splits at a
  // time: kUnits * kBatch independent 16-byte loads per round trip.
  constexpr int kVec = 4, kUnits = 4, kBatch = 2;
  const int n = used * (D / kVec);
  for (int base = team.tid; base < n; base += kThreads * kUnits) {
    int row[kUnits], d[kUnits];
    float4 acc[kUnits];
#pragma unroll
    for (int u = 0; u < kUnits; ++u) {
      const int idx = min(base + u * kThreads, n - 1);  // past n: a duplicate, not stored
      row[u] = idx / (D / kVec);
      d[u] = (idx % (D / kVec)) * kVec;
      acc[u] = make_float4(0.f, 0.f, 0.f, 0.f);
    }
    for (int s0 = 0; s0 < ns; s0 += kBatch) {
      float4 v[kBatch][kUnits];
      float w[kBatch][kUnits];
#pragma unroll
      for (int j = 0; j < kBatch; ++j)
#pragma unroll
        for (int u = 0; u < kUnits; ++u) {
          const int s = min(s0 + j, ns - 1);  // past ns: weight 0
          const int64_t prow = it.slot_base + s * used + row[u];
          v[j][u] = __ldcg(reinterpret_cast<const float4*>(p.partial_o + prow * D + d[u]));
          w[j][u] = s0 + j < ns ? __ldcg(p.partial_lse + prow) : -INFINITY;
        }
#pragma unroll
      for (int j = 0; j < kBatch; ++j)
#pragma unroll
        for (int u = 0; u < kUnits; ++u) {
          const float wt = exp2f(w[j][u] - s_max[row[u]]);
          acc[u].x += wt * v[j][u].x;
          acc[u].y += wt * v[j][u].y;
          acc[u].z += wt * v[j][u].z;
          acc[u].w += wt * v[j][u].w;
        }
    }
#pragma unroll
    for (int u = 0; u < kUnits; ++u) {
      if (base + u * kThreads >= n) break;
      if (d[u] >= p.head_dim) continue;
      const float inv = s_inv[row[u]];
      uint32_t* dst = reinterpret_cast<uint32_t*>(out_at<typename Cfg::T>(p, it, row[u], d[u]));
      store_out2<Cfg>(p, dst, acc[u].x * inv, acc[u].y * inv);
      store_out2<Cfg>(p, dst + 1, acc[u].z * inv, acc[u].w * inv);
    }
  }
}

}  // namespace pod
