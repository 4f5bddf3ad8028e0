// The decode step of 16-bit caches: one warp, 8 query rows of an item against a 16-key slice of a
// K/V tile, on mma.sync m16n8k16 with the operands swapped. Keys take the MMA's 16-row side and
// query rows its 8-column side (S^T = K Q^T, O^T += V^T P^T), so a GQA group of up to 8 rows costs
// 16 mma.sync and 20 ldmatrix per 16 keys at D = 128, where rows on the 16-row side cost 32 and 24.
// Beside the prefill consumers' wgmma the decode warps wait mostly for the tensor pipe
// (docs/design.md, "The decode tile"), so these instructions set their rate. An fp8 cache's decode
// step computes on K's and V's bytes with rows on the 16-row side (warp_attend).
#pragma once
#include "attention_tile.cuh"

namespace pod {

// How a decode team's warps share an item (16-bit caches): items of up to 8 rows give every warp
// all rows and one 16-key slice of each tile; items of 9 to 16 rows give each warp one 8-row half
// and two slices, half of the warps per half. Either way a warp holds one 8-row state.
struct DecodeWarpShare {
  int row0, slice0, slices;
};
__device__ __forceinline__ DecodeWarpShare decode_warp_share(int warp, int used) {
  if (used <= 8) return {0, warp, 1};
  return {8 * (warp & 1), 2 * (warp >> 1), 2};
}

// Running state of one decode warp over 8 rows, transposed: thread (g = lane/4, t = lane%4) holds
// rows 2t and 2t + 1 at dims 16 j + g and 16 j + g + 8 of each 16-dim m-tile j (o[j]: (g, 2t),
// (g, 2t+1), (g+8, 2t), (g+8, 2t+1)).
template <class Cfg>
struct DecodeState {
  float o[Cfg::D / 16][4];
  float m[2];  // running max of raw scores, rows 2t and 2t + 1
  float l[2];  // running sum (this thread's keys only until finalize)

  __device__ __forceinline__ void init() {
#pragma unroll
    for (int j = 0; j < Cfg::D / 16; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
    m[0] = m[1] = -INFINITY;
    l[0] = l[1] = 0.f;
  }

  // Sums l over the eight lanes that share a row, normalises o in place and returns each row's
  // log2-sum-exp (-inf if empty).
  __device__ __forceinline__ void finalize(float scale_log2, float (&lse)[2]) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float& sum = l[r];
      sum += __shfl_xor_sync(0xffffffff, sum, 4);
      sum += __shfl_xor_sync(0xffffffff, sum, 8);
      sum += __shfl_xor_sync(0xffffffff, sum, 16);
      const float mx = m[r] * scale_log2;
      const float inv = inverse_denominator(sum, mx, -INFINITY);
      lse[r] = sum > 0.f ? mx + __log2f(sum) : -INFINITY;
#pragma unroll
      for (int j = 0; j < Cfg::D / 16; ++j) {
        o[j][r] *= inv;
        o[j][2 + r] *= inv;
      }
    }
  }
};

// The sequence positions of a thread's rows row0 + 2t and row0 + 2t + 1 (token-major, heads minor).
__device__ __forceinline__ void decode_row_positions(const WorkItem& it, int row0, int lane, int (&pos)[2]) {
#pragma unroll
  for (int r = 0; r < 2; ++r) pos[r] = it.q_pos0 + (row0 + 2 * (lane & 3) + r) / it.nh;
}

// One warp: rows [row0, row0 + 8) of sQ against keys [kw0, kw0 + 16) of the K/V tile sK/sV (all
// [rows][D] swizzled tiles, Cfg::swz); key0 is the sequence position of key kw0.
template <class Cfg, class Mods>
__device__ __forceinline__ void decode_attend(DecodeState<Cfg>& st, const typename Cfg::T* sQ,
                                              const typename Cfg::T* sK, const typename Cfg::T* sV,
                                              int row0, int kw0, int key0, int kv_end,
                                              const int (&row_pos)[2], const PodParams& p) {
  using T = typename Cfg::T;
  constexpr int D = Cfg::D;
  const int lane = threadIdx.x & 31;
  static_assert(!Cfg::kFp8, "16-bit caches");

  // S^T = K Q^T: A = the 16 keys, B = Q^T. Even and odd k-steps go to separate accumulators, so
  // the dependent mma chain is D/32 long, not D/16.
  float s[2][4];
#pragma unroll
  for (int h = 0; h < 2; ++h) s[h][0] = s[h][1] = s[h][2] = s[h][3] = 0.f;
#pragma unroll
  for (int kk2 = 0; kk2 < D / 32; ++kk2) {
    // Dims 32 kk2 .. 32 kk2 + 31 of the 8 rows: the B fragments of two k-steps.
    uint32_t b[4];
    ldmatrix_x4(b, sQ + Cfg::swz(row0 + (lane & 7), 32 * kk2 + (lane >> 3) * 8));
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      uint32_t a[4];
      ldmatrix_x4(a, sK + Cfg::swz(kw0 + (lane & 15), (2 * kk2 + h) * 16 + (lane >> 4) * 8));
      MmaOp<T>::run(s[h], a, b[2 * h], b[2 * h + 1]);
    }
  }

  // Online softmax over keys, per row (a column here): thread (g, t) holds keys g and g + 8 of rows
  // 2t and 2t + 1; the row's other keys are in the lanes of the same t.
  const int g = lane >> 2;
  const float scale_log2 = p.scale_log2;
  float e[4], alpha[2];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    e[i] = s[0][i] + s[1][i];
    if constexpr (Mods::kSoftcap) e[i] = softcapped(e[i], p);
    if constexpr (Mods::kMask)
      if (key_masked(key0 + g + 8 * (i >> 1), row_pos[i & 1], kv_end, p)) e[i] = -INFINITY;
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float mx = fmaxf(st.m[r], fmaxf(e[r], e[2 + r]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 4));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 8));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 16));
    const float base = advance_max(st.m[r], mx, scale_log2, alpha[r]);
    e[r] = exp2f(fmaf(e[r], scale_log2, -base));
    e[2 + r] = exp2f(fmaf(e[2 + r], scale_log2, -base));
    st.l[r] = st.l[r] * alpha[r] + e[r] + e[2 + r];
  }
  // Every factor is exactly 1 unless some row's max moved past the slack: the warp skips the rescale.
  if (__any_sync(0xffffffff, alpha[0] != 1.f || alpha[1] != 1.f)) {
#pragma unroll
    for (int j = 0; j < D / 16; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) st.o[j][i] *= alpha[i & 1];
  }

  // O^T += V^T P^T. P^T's B fragments: keys g (and g + 8) of rows 2t, 2t + 1, transposed to keys
  // 2t, 2t + 1 (and + 8) of row g. A = V^T: 16 dims x the 16 keys, ldmatrix.trans of V's rows.
  const uint32_t pt0 = movmatrix_trans(pack2<T>(e[0], e[1]));
  const uint32_t pt1 = movmatrix_trans(pack2<T>(e[2], e[3]));
#pragma unroll
  for (int j = 0; j < D / 16; ++j) {
    uint32_t a[4];
    ldmatrix_x4_trans(a, sV + Cfg::swz(kw0 + (lane & 7) + ((lane >> 4) & 1) * 8, 16 * j + ((lane >> 3) & 1) * 8));
    MmaOp<T>::run(st.o[j], a, pt0, pt1);
  }
}

}  // namespace pod
