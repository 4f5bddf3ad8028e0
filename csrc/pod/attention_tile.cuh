// The per-warp attention step shared by both tile kinds: 16 query rows against NK keys of the
// K/V tile in shared memory (S = Q K^T, masked online softmax, O += P V) on mma.sync m16n8k16.
// A prefill warp takes all keys of the tile for its own 16 rows; a decode warp takes a 16-key slice
// for the tile's only 16 rows. This is the part a Hopper (wgmma) path would replace.
#pragma once
#include <cmath>
#include "ptx.cuh"
#include "tile_config.cuh"

namespace pod {

// Running softmax state of one warp: thread (g = lane/4, c = lane%4) holds rows g and g+8,
// output columns 8*j + 2c, 8*j + 2c + 1 for each 8-column tile j.
template <class Cfg>
struct WarpState {
  float o[Cfg::D / 8][4];
  float m[2];  // running row max of raw scores
  float l[2];  // running row sum (this thread's columns only until finalize)

  __device__ __forceinline__ void init() {
#pragma unroll
    for (int j = 0; j < Cfg::D / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
    m[0] = m[1] = -INFINITY;
    l[0] = l[1] = 0.f;
  }

  // Sums l over the quad, normalises o in place and returns each row's log2-sum-exp (-inf if empty).
  __device__ __forceinline__ void finalize(float scale_log2, float (&lse)[2]) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      l[r] += __shfl_xor_sync(0xffffffff, l[r], 1);
      l[r] += __shfl_xor_sync(0xffffffff, l[r], 2);
      const float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;
      lse[r] = l[r] > 0.f ? m[r] * scale_log2 + __log2f(l[r]) : -INFINITY;
#pragma unroll
      for (int j = 0; j < Cfg::D / 8; ++j) {
        o[j][2 * r] *= inv;
        o[j][2 * r + 1] *= inv;
      }
    }
  }
};

// One warp, one K/V tile: rows [q_row0, q_row0+16) of sQ against keys [kw0, kw0+NK) of sK/sV.
// key0 is the sequence position of key kw0. With kMask, a key counts only if it is < kv_end and
// <= the row's position (row_pos, per thread's two rows).
template <class Cfg, int NK, bool kMask>
__device__ __forceinline__ void warp_attend(WarpState<Cfg>& st, const typename Cfg::T* sQ,
                                            const typename Cfg::T* sK,
                                            const typename Cfg::T* sV, int q_row0, int kw0,
                                            int key0, int kv_end, const int (&row_pos)[2],
                                            float scale_log2) {
  using T = typename Cfg::T;
  constexpr int D = Cfg::D;
  const int lane = threadIdx.x & 31;

  float s[NK / 8][4];
#pragma unroll
  for (int j = 0; j < NK / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;

#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    uint32_t a[4];
    ldmatrix_x4(a, sQ + Cfg::swz(q_row0 + (lane & 15), kk * 16 + (lane >> 4) * 8));
#pragma unroll
    for (int nb = 0; nb < NK / 16; ++nb) {
      uint32_t b[4];
      ldmatrix_x4(b, sK + Cfg::swz(kw0 + nb * 16 + (lane >> 4) * 8 + (lane & 7),
                                   kk * 16 + ((lane >> 3) & 1) * 8));
      MmaOp<T>::run(s[2 * nb], a, b[0], b[1]);
      MmaOp<T>::run(s[2 * nb + 1], a, b[2], b[3]);
    }
  }

  if constexpr (kMask) {
#pragma unroll
    for (int j = 0; j < NK / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = key0 + j * 8 + 2 * (lane & 3) + (e & 1);
        if (key >= kv_end || key > row_pos[e >> 1]) s[j][e] = -INFINITY;
      }
  }

  // Online softmax in the log2 domain (exp2 of scaled scores).
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float mx = st.m[r];
#pragma unroll
    for (int j = 0; j < NK / 8; ++j) mx = fmaxf(mx, fmaxf(s[j][2 * r], s[j][2 * r + 1]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 2));
    // A row with no visible key so far keeps max -inf; subtract 0 then so exp2 gives exact zeros.
    const float base = mx == -INFINITY ? 0.f : mx * scale_log2;
    const float alpha = exp2f(st.m[r] * scale_log2 - base);
    st.m[r] = mx;
    float sum = 0.f;
#pragma unroll
    for (int j = 0; j < NK / 8; ++j) {
      s[j][2 * r] = exp2f(fmaf(s[j][2 * r], scale_log2, -base));
      s[j][2 * r + 1] = exp2f(fmaf(s[j][2 * r + 1], scale_log2, -base));
      sum += s[j][2 * r] + s[j][2 * r + 1];
    }
    st.l[r] = st.l[r] * alpha + sum;
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      st.o[j][2 * r] *= alpha;
      st.o[j][2 * r + 1] *= alpha;
    }
  }

  // O += P V: the S accumulators of two 8-key tiles form one A fragment of 16 keys.
#pragma unroll
  for (int kk = 0; kk < NK / 16; ++kk) {
    uint32_t a[4];
    a[0] = pack2<T>(s[2 * kk][0], s[2 * kk][1]);
    a[1] = pack2<T>(s[2 * kk][2], s[2 * kk][3]);
    a[2] = pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
    a[3] = pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
    for (int dp = 0; dp < D / 16; ++dp) {
      uint32_t b[4];
      ldmatrix_x4_trans(b, sV + Cfg::swz(kw0 + kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8,
                                         dp * 16 + (lane >> 4) * 8));
      MmaOp<T>::run(st.o[2 * dp], a, b[0], b[1]);
      MmaOp<T>::run(st.o[2 * dp + 1], a, b[2], b[3]);
    }
  }
}

}  // namespace pod
