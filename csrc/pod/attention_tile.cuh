// The per-warp attention step on mma.sync m16n8k16 with query rows on the 16-row side: 16*M rows
// against NK keys of the K/V tile in shared memory (S = Q K^T, masked online softmax, O += P V).
// A prefill warp of the mma.sync tile takes all keys of the tile for its own 16*M rows; an fp8
// cache's decode warp takes a 16-key slice for the item's 16 rows, straight from K's and V's byte
// tiles, regrouped in registers into fp16 fragments (16-bit caches decode with the operands
// swapped: decode_tile.cuh). The score modifiers, the masked softmax and the P fragments are
// shared with the Hopper prefill step (attention_tile_sm90.cuh) and the decode step.
#pragma once
#include <cmath>
#include "ptx.cuh"
#include "tile_config.cuh"

// A planted fault for the end-to-end check (benchmarks/e2e_check.py must catch it): with
// -DPOD_PLANT_CAUSAL_SHIFT=N every query row also sees the next N keys. 0 in every real build.
#ifndef POD_PLANT_CAUSAL_SHIFT
#define POD_PLANT_CAUSAL_SHIFT 0
#endif

namespace pod {

// An item as every mainloop walks it: key tiles of `keys` keys from kv_start, which of them need
// the per-key mask, and the sequence positions of a thread's query rows.
__device__ __forceinline__ int num_kv_tiles(const WorkItem& it, int keys) {
  return (it.kv_end - it.kv_start + keys - 1) / keys;
}
// The key tiles of an item that need the per-key mask: those past the causal diagonal or the end
// of the key range, and those starting before the sliding window of the item's last row.
struct TileMask {
  int right_after, left_before;
  __device__ __forceinline__ bool operator()(int tile_start) const {
    return tile_start > right_after || tile_start < left_before;
  }
};
__device__ __forceinline__ TileMask tile_mask(const WorkItem& it, int keys, int window_left) {
  return {min(it.kv_end, it.q_pos0 + 1) - keys, it.q_pos0 + it.n_tok - 1 - window_left};
}
// A lane's two rows (lane / 4, and 8 below it) of the 16-row slice that starts at the item's query
// row row0 (rows are token-major, heads minor).
__device__ __forceinline__ void thread_row_positions(const WorkItem& it, int row0, int lane, int (&pos)[2]) {
#pragma unroll
  for (int r = 0; r < 2; ++r) pos[r] = it.q_pos0 + (row0 + (lane >> 2) + 8 * r) / it.nh;
}

// 1 / the softmax denominator of a row whose exp2 terms, taken relative to mx (log2 units), sum to
// sum, with the row's sink (log2 units, or -inf) joined; 0 for a row that saw no key.
__device__ __forceinline__ float inverse_denominator(float sum, float mx, float sink) {
  if (sink != -INFINITY && mx != -INFINITY) sum += exp2f(sink - mx);
  return sum > 0.f ? 1.f / sum : 0.f;
}

// Running softmax state of one warp over M m16 tiles of rows: thread (g = lane/4, c = lane%4)
// holds rows 16*mt + g and 16*mt + g + 8, output columns 8*j + 2c, 8*j + 2c + 1 of each 8-column j.
template <class Cfg, int M>
struct WarpState {
  float o[M][Cfg::D / 8][4];
  float m[M][2];  // running row max of raw scores
  float l[M][2];  // running row sum (this thread's columns only until finalize)

  __device__ __forceinline__ void init() {
#pragma unroll
    for (int mt = 0; mt < M; ++mt) {
#pragma unroll
      for (int j = 0; j < Cfg::D / 8; ++j) o[mt][j][0] = o[mt][j][1] = o[mt][j][2] = o[mt][j][3] = 0.f;
      m[mt][0] = m[mt][1] = -INFINITY;
      l[mt][0] = l[mt][1] = 0.f;
    }
  }

  // Sums l over the quad, normalises o in place and returns each row's log2-sum-exp (-inf if empty).
  // sink_log2: per row, a logit (log2 units) that joins the denominator without a value, or -inf.
  // out_scale: a factor on every output (an fp8 cache's v descale).
  __device__ __forceinline__ void finalize(float scale_log2, float (&lse)[M][2],
                                           const float (&sink_log2)[M][2], float out_scale) {
#pragma unroll
    for (int mt = 0; mt < M; ++mt)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float& sum = l[mt][r];
        sum += __shfl_xor_sync(0xffffffff, sum, 1);
        sum += __shfl_xor_sync(0xffffffff, sum, 2);
        const float mx = m[mt][r] * scale_log2;
        float inv = inverse_denominator(sum, mx, sink_log2[mt][r]);
        if constexpr (Cfg::kFp8) inv *= out_scale;
        // Without the sink: only KV-split parts, which carry none, write their lse.
        lse[mt][r] = sum > 0.f ? mx + __log2f(sum) : -INFINITY;
#pragma unroll
        for (int j = 0; j < Cfg::D / 8; ++j) {
          o[mt][j][2 * r] *= inv;
          o[mt][j][2 * r + 1] *= inv;
        }
      }
  }
};

// tanh(x) from one exp2: accurate to a few ulps of 1 over the whole range (tanh.approx.f32 is off
// by up to 2^-11 relative, 0.02 of a logit capped at 50).
__device__ __forceinline__ float tanh_exp2(float x) {
  return 1.f - __fdividef(2.f, exp2f(x * 2.8853900817779268f) + 1.f);  // 2 log2(e)
}

// What a tile step does to its raw scores before the softmax, both fixed at compile time: kMask,
// the per-key mask, chosen per tile; kSoftcap, the logits soft-cap, chosen per item outside the key
// loop (a soft-cap step inside the loop body, even one never taken, made long prefills without a
// soft-cap 2-3% slower).
template <bool kMask_, bool kSoftcap_>
struct ScoreMods {
  static constexpr bool kMask = kMask_, kSoftcap = kSoftcap_;
};
// Runs loop(std::true_type{}) for a soft-capped layer, loop(std::false_type{}) otherwise.
template <class Loop>
__device__ __forceinline__ void with_softcap(const PodParams& p, Loop&& loop) {
  if (p.softcap_in != 0.f) loop(std::true_type{});
  else loop(std::false_type{});
}
// Runs body(params) with the params an item is computed with: for an fp8 cache, its KV head's
// descales folded in (q x k into the scores' scale, v into out_scale), else p itself.
template <class Cfg, class Body>
__device__ __forceinline__ void with_item_scales(const PodParams& p, const WorkItem& it, Body&& body) {
  if constexpr (Cfg::kFp8) {
    PodParams scaled = p;
    const int i = it.kv_head * p.descale_stride;
    const float qk = __ldg(p.q_descale + i) * __ldg(p.k_descale + i);
    // The soft-cap takes the raw score (the scale after it); without one the scale takes it all.
    if (p.softcap_in != 0.f) scaled.softcap_in *= qk;
    else scaled.scale_log2 *= qk;
    scaled.out_scale = __ldg(p.v_descale + i);
    body(static_cast<const PodParams&>(scaled));
  } else {
    body(p);
  }
}
// Runs step(ScoreMods<masked, kSoftcap>{}).
template <bool kSoftcap, class Step>
__device__ __forceinline__ void with_mask(bool masked, Step&& step) {
  if (masked) step(ScoreMods<true, kSoftcap>{});
  else step(ScoreMods<false, kSoftcap>{});
}

// What a tile step does to a raw score before the softmax: the soft-cap (tanh), and the mask,
// which hides keys past kv_end, past the row at sequence position row_pos (causal) and before the
// row's sliding window.
__device__ __forceinline__ float softcapped(float s, const PodParams& p) {
  return tanh_exp2(s * p.softcap_in) * p.softcap_out;
}
__device__ __forceinline__ bool key_masked(int key, int row_pos, int kv_end, const PodParams& p) {
  return key >= kv_end || key > row_pos + POD_PLANT_CAUSAL_SHIFT || key < row_pos - p.window_left;
}

// How far (log2 units) a row's scores may exceed its running max before the max moves (online_softmax).
constexpr float kRescaleSlackLog2 = 8.f;

// A row's running max m (raw scores) when a tile's scores reach mx: kept unless mx exceeds it by
// more than the slack. Returns the new max in log2 units, the base the tile's terms are taken
// against (0 for a row with no visible key so far: its max stays -inf and exp2 gives exact zeros),
// and sets alpha, the factor for what was accumulated against the old max. Both products are
// rounded on their own (__fmul_rn is never fused into an FMA): with the max kept they are equal, so
// alpha is exactly 1 and the rescale is skipped.
__device__ __forceinline__ float advance_max(float& m, float mx, float scale_log2, float& alpha) {
  if (mx * scale_log2 <= fmaf(m, scale_log2, kRescaleSlackLog2)) mx = m;
  const float base = mx == -INFINITY ? 0.f : __fmul_rn(mx, scale_log2);
  alpha = exp2f(__fmul_rn(m, scale_log2) - base);
  m = mx;
  return base;
}

// Soft-caps and masks one tile's raw scores s of m-tile mt (softcapped, key_masked) and folds them into
// the running max and sum; on return s holds the tile's probabilities, unnormalised (exp2 of
// scaled scores minus the running max), and alpha the factor by which the m-tile's o must be
// rescaled (rescale_o) before this tile's P V is added. pos: the sequence positions of this
// thread's two rows.
template <class Cfg, int M, int NK, class Mods>
__device__ __forceinline__ void online_softmax(WarpState<Cfg, M>& st, int mt, float (&s)[NK / 8][4],
                                               int key0, int kv_end, const int (&pos)[2],
                                               const PodParams& p, float (&alpha)[2]) {
  const int lane = threadIdx.x & 31;
  const float scale_log2 = p.scale_log2;
  if constexpr (Mods::kSoftcap) {
#pragma unroll
    for (int j = 0; j < NK / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[j][e] = softcapped(s[j][e], p);
  }
  if constexpr (Mods::kMask) {
#pragma unroll
    for (int j = 0; j < NK / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        if (key_masked(key0 + j * 8 + 2 * (lane & 3) + (e & 1), pos[e >> 1], kv_end, p)) s[j][e] = -INFINITY;
  }

  // Online softmax in the log2 domain (exp2 of scaled scores). The running max moves only when a
  // tile's max exceeds it by more than kRescaleSlackLog2: below that the tile's terms are taken
  // against the old max (so they reach 2^kRescaleSlackLog2, far inside T's range), alpha stays
  // exactly 1 and the caller skips the O rescale. The sum, the output and the log-sum-exp all use
  // the max kept, so the result is the same softmax.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float mx = st.m[mt][r];
#pragma unroll
    for (int j = 0; j < NK / 8; ++j) mx = fmaxf(mx, fmaxf(s[j][2 * r], s[j][2 * r + 1]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 2));
    const float base = advance_max(st.m[mt][r], mx, scale_log2, alpha[r]);
    float sum = 0.f;
#pragma unroll
    for (int j = 0; j < NK / 8; ++j) {
      s[j][2 * r] = exp2f(fmaf(s[j][2 * r], scale_log2, -base));
      s[j][2 * r + 1] = exp2f(fmaf(s[j][2 * r + 1], scale_log2, -base));
      sum += s[j][2 * r] + s[j][2 * r + 1];
    }
    st.l[mt][r] = st.l[mt][r] * alpha[r] + sum;
  }
}

template <class Cfg, int M>
__device__ __forceinline__ void rescale_o(WarpState<Cfg, M>& st, int mt, const float (&alpha)[2]) {
#pragma unroll
  for (int j = 0; j < Cfg::D / 8; ++j) {
    st.o[mt][j][0] *= alpha[0];
    st.o[mt][j][1] *= alpha[0];
    st.o[mt][j][2] *= alpha[1];
    st.o[mt][j][3] *= alpha[1];
  }
}

// online_softmax with the rescale of o applied at once, skipped by a warp none of whose rows' max
// moved (every factor is then exactly 1, so the skip is exact).
template <class Cfg, int M, int NK, class Mods>
__device__ __forceinline__ void masked_online_softmax(WarpState<Cfg, M>& st, int mt,
                                                      float (&s)[NK / 8][4], int key0, int kv_end,
                                                      const int (&pos)[2], const PodParams& p) {
  float alpha[2];
  online_softmax<Cfg, M, NK, Mods>(st, mt, s, key0, kv_end, pos, p, alpha);
  if (__any_sync(0xffffffff, alpha[0] != 1.f || alpha[1] != 1.f)) rescale_o<Cfg, M>(st, mt, alpha);
}

// The A fragment (16 rows x 16 keys) of P for keys [16*kk, 16*kk+16): the accumulators of two
// 8-key column tiles, packed to T (the m16n8 C layout is the m16n8k16 A layout).
template <typename T, int NK>
__device__ __forceinline__ void p_fragment(const float (&s)[NK / 8][4], int kk, uint32_t (&a)[4]) {
  a[0] = pack2<T>(s[2 * kk][0], s[2 * kk][1]);
  a[1] = pack2<T>(s[2 * kk][2], s[2 * kk][3]);
  a[2] = pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
  a[3] = pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
}

// One warp, one K/V tile: rows [q_row0, q_row0 + 16*M) of sQ against keys [kw0, kw0+NK) of sK/sV.
// key0 is the sequence position of key kw0. With Mods::kMask, a key counts only if it is < kv_end
// and within the row's causal window (row_pos, per m-tile and per thread's two rows).
template <class Cfg, int M, int NK, class Mods>
__device__ __forceinline__ void warp_attend(WarpState<Cfg, M>& st, const typename Cfg::T* sQ,
                                            const typename Cfg::T* sK,
                                            const typename Cfg::T* sV, int q_row0, int kw0,
                                            int key0, int kv_end, const int (&row_pos)[M][2],
                                            const PodParams& p) {
  using T = typename Cfg::T;
  constexpr int D = Cfg::D;
  const int lane = threadIdx.x & 31;

  float s[M][NK / 8][4];
#pragma unroll
  for (int mt = 0; mt < M; ++mt)
#pragma unroll
    for (int j = 0; j < NK / 8; ++j) s[mt][j][0] = s[mt][j][1] = s[mt][j][2] = s[mt][j][3] = 0.f;

  // An fp8 cache reaches this step only in decode tiles (its prefill tiles run wgmma).
  static_assert(!Cfg::kFp8 || M == 1, "fp8: decode tiles only");
  if constexpr (Cfg::kFp8) {
    // An fp8 cache: sK and sV hold e4m3 bytes (fp8_swz tiles, 16 values per 16-byte chunk), sQ the
    // query in fp16, converted once per item in score order (convert_chunk_fp8). K's byte
    // fragments, 32 dims per ldmatrix: lane (g, t) holds dims 4t..4t+3 and 16+4t..16+4t+3 of key
    // g (and of key g + 8). Each byte pair becomes one fp16 B register of m16n8k16 (dims 4t, 4t+1
    // at k positions 2t, 2t+1, dims 4t+2, 4t+3 at 2t+8, 2t+9), where the query in score order has
    // the same dims: the scores sum the same products, on fp16 mma.
    const uint8_t* k8 = reinterpret_cast<const uint8_t*>(sK);
#pragma unroll
    for (int kk = 0; kk < D / 32; ++kk) {
      uint32_t a[2][4];
#pragma unroll
      for (int h = 0; h < 2; ++h)
        ldmatrix_x4(a[h], sQ + Cfg::swz(q_row0 + (lane & 15), (2 * kk + h) * 16 + (lane >> 4) * 8));
#pragma unroll
      for (int nb = 0; nb < NK / 16; ++nb) {
        uint32_t b[4];
        ldmatrix_x4(b, k8 + fp8_swz<D>(kw0 + nb * 16 + (lane >> 4) * 8 + (lane & 7), 2 * kk + ((lane >> 3) & 1)));
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          MmaOp<T>::run(s[0][2 * nb], a[h], e4m3x2_to_half2(b[h]), e4m3x2_to_half2<true>(b[h]));
          MmaOp<T>::run(s[0][2 * nb + 1], a[h], e4m3x2_to_half2(b[2 + h]), e4m3x2_to_half2<true>(b[2 + h]));
        }
      }
    }
  } else {
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t a[M][4];
#pragma unroll
      for (int mt = 0; mt < M; ++mt)
        ldmatrix_x4(a[mt], sQ + Cfg::swz(q_row0 + 16 * mt + (lane & 15), kk * 16 + (lane >> 4) * 8));
#pragma unroll
      for (int nb = 0; nb < NK / 16; ++nb) {
        uint32_t b[4];
        ldmatrix_x4(b, sK + Cfg::swz(kw0 + nb * 16 + (lane >> 4) * 8 + (lane & 7),
                                     kk * 16 + ((lane >> 3) & 1) * 8));
#pragma unroll
        for (int mt = 0; mt < M; ++mt) {
          MmaOp<T>::run(s[mt][2 * nb], a[mt], b[0], b[1]);
          MmaOp<T>::run(s[mt][2 * nb + 1], a[mt], b[2], b[3]);
        }
      }
    }
  }

#pragma unroll
  for (int mt = 0; mt < M; ++mt)
    masked_online_softmax<Cfg, M, NK, Mods>(st, mt, s[mt], key0, kv_end, row_pos[mt], p);

  // O += P V.
  if constexpr (Cfg::kFp8) {
    // V's bytes, regrouped in registers into the fp16 B fragments (no converted tile): lane (g, t)
    // needs, per dim, its keys 2t, 2t + 1, 2t + 8 and 2t + 9. It loads one 32-bit word (4 dims) of
    // each of these keys and pairs their bytes per dim (prmt). Its n-tile 4q + r, column g, then
    // holds dim 4 (8q + g) + r: the accumulators' dims are permuted (merge_decode_warps puts them back).
    const uint8_t* v8 = reinterpret_cast<const uint8_t*>(sV);
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int kk = 0; kk < NK / 16; ++kk) {
      uint32_t a[4];
      p_fragment<T, NK>(s[0], kk, a);
      const int key = kw0 + 16 * kk + 2 * t;
#pragma unroll
      for (int q = 0; q < D / 32; ++q) {
        const int c = 2 * q + (g >> 2), byte = 4 * (g & 3);  // the word's chunk, and where in it
        auto word = [&](int k) { return *reinterpret_cast<const uint32_t*>(v8 + fp8_swz<D>(k, c) + byte); };
        const uint32_t w0 = word(key), w1 = word(key + 1), w8 = word(key + 8), w9 = word(key + 9);
        // [k.d0, k+1.d0, k.d1, k+1.d1] and [k.d2, k+1.d2, k.d3, k+1.d3], for both key pairs
        const uint32_t lo = __byte_perm(w0, w1, 0x5140), hi = __byte_perm(w0, w1, 0x7362);
        const uint32_t lo8 = __byte_perm(w8, w9, 0x5140), hi8 = __byte_perm(w8, w9, 0x7362);
        MmaOp<T>::run(st.o[0][4 * q + 0], a, e4m3x2_to_half2(lo), e4m3x2_to_half2(lo8));
        MmaOp<T>::run(st.o[0][4 * q + 1], a, e4m3x2_to_half2<true>(lo), e4m3x2_to_half2<true>(lo8));
        MmaOp<T>::run(st.o[0][4 * q + 2], a, e4m3x2_to_half2(hi), e4m3x2_to_half2(hi8));
        MmaOp<T>::run(st.o[0][4 * q + 3], a, e4m3x2_to_half2<true>(hi), e4m3x2_to_half2<true>(hi8));
      }
    }
  } else {
#pragma unroll
    for (int kk = 0; kk < NK / 16; ++kk) {
      uint32_t a[M][4];
#pragma unroll
      for (int mt = 0; mt < M; ++mt) p_fragment<T, NK>(s[mt], kk, a[mt]);
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, sV + Cfg::swz(kw0 + kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8,
                                           dp * 16 + (lane >> 4) * 8));
#pragma unroll
        for (int mt = 0; mt < M; ++mt) {
          MmaOp<T>::run(st.o[mt][2 * dp], a[mt], b[0], b[1]);
          MmaOp<T>::run(st.o[mt][2 * dp + 1], a[mt], b[2], b[3]);
        }
      }
    }
  }
}

}  // namespace pod
