// Hopper prefill step (the sm_90a configuration, built with -DPOD_WGMMA_PREFILL): the CTA's four
// warps act as one warpgroup and compute S = Q K^T and O += P V with wgmma for 128 query rows (two
// m64 tiles; one at head dim 256, where two would not fit the registers) against one K/V tile, with
// Q, K and V read by the tensor cores straight from shared memory and P from registers. 128 rows
// halve the K/V traffic from L2 per FLOP against 64 (docs/design.md, "Tile shapes"). The softmax is
// the mma.sync path's (attention_tile.cuh): wgmma's m64 accumulators give each warp 16 rows in the
// mma.sync register layout. The scheduler, the plan, the decode tiles and the merges are shared.
//
// Shared-memory tiles of this path use the canonical 128-byte-swizzled GMMA layout: per 64-column
// block, rows of 128 bytes whose 16-byte chunks are XOR-ed with (row % 8), 8-row atoms of 1 KiB.
// tests/test_sm90_layout.py checks these offsets and descriptor strides against CuTe's
// tile_to_shape(Layout_{K,MN}_SW128_Atom) and make_gmma_desc.
#pragma once
#include <cstdint>
#include <utility>

#include "attention_tile.cuh"

#if defined(POD_WGMMA_PREFILL)
#include <cute/arch/mma_sm90.hpp>

namespace pod::sm90 {

// Element offset of (row, col) in a [kRows x D] tile stored in the SW128 layout.
template <int kRows>
__host__ __device__ constexpr int sw128(int row, int col) {
  return (col / 64) * kRows * 64 + row * 64 + ((((col % 64) >> 3) ^ (row & 7)) << 3) + (col & 7);
}

// Element offset of m64 slice mt (rows 64*mt...) of a K-major SW128 tile: whole 8-row atoms, so the
// slice has the tile's layout and descriptor strides.
__host__ __device__ constexpr int m64_slice(int mt) { return mt * 64 * 64; }

template <int kRows>
struct Sw128Layout {
  __device__ __forceinline__ static int at(int row, int col) { return sw128<kRows>(row, col); }
};

constexpr uint32_t kAtomBytes = 1024;  // 8 rows x 128 bytes: the stride between 8-row groups

// The wgmma shared-memory descriptor of an SW128 operand `offset` bytes into the tile at shared
// address `tile` (lbo = leading byte offset as make_gmma_desc computes it for these layouts; the
// stride byte offset is always one 8-row atom). Fields: start address >> 4 (bits 0-13), lbo >> 4
// (16-29), sbo >> 4 (32-45), layout type 1 = SW128 (62-63).
__host__ __device__ constexpr uint64_t sw128_desc(uint32_t tile, uint32_t offset, uint32_t lbo) {
  // Shared addresses lie below 2^18, so tile >> 4 fits the 14-bit start field unmasked and a k-step
  // is one constant added to the tile's start: one uniform add per wgmma, not a rebuilt descriptor.
  const uint32_t lo = (tile >> 4) + (offset >> 4) + ((lbo >> 4) << 16);
  return (uint64_t((kAtomBytes >> 4) | (1u << 30)) << 32) | lo;
}

// K-major operand (Q as A, K as B): the 16-column k-step kk of a [kRows x D] tile.
template <typename T, int kRows>
__device__ __forceinline__ uint64_t kmajor_desc(const T* tile, int kk) {
  return sw128_desc(smem_addr(tile), sizeof(T) * sw128<kRows>(0, 16 * kk), 16);
}
// MN-major operand (V as B, N = D): keys [16*kk, 16*kk+16) of a [kKeys x D] tile stored by key;
// consecutive 64-column blocks of D lie kKeys * 128 bytes apart (no second block: 0).
template <int kKeys, int D>
constexpr uint32_t kMnMajorLbo = D > 64 ? kKeys * 128 : 0;
template <typename T, int kKeys, int D>
__device__ __forceinline__ uint64_t mnmajor_desc(const T* tile, int kk) {
  return sw128_desc(smem_addr(tile), sizeof(T) * sw128<kKeys>(16 * kk, 0), kMnMajorLbo<kKeys, D>);
}

template <typename T> struct CuteType;
template <> struct CuteType<__nv_bfloat16> { using type = cute::bfloat16_t; };
template <> struct CuteType<__half> { using type = cute::half_t; };

template <typename T, int N>
using SsOp = decltype(cute::SM90::GMMA::ss_op_selector<
                      typename CuteType<T>::type, typename CuteType<T>::type, float,
                      cute::Shape<cute::_64, cute::Int<N>, cute::_16>,
                      cute::SM90::GMMA::Major::K, cute::SM90::GMMA::Major::K>());
template <int N>
using SsOpE4m3 = decltype(cute::SM90::GMMA::ss_op_selector<
                          cute::float_e4m3_t, cute::float_e4m3_t, float, cute::Shape<cute::_64, cute::Int<N>, cute::_32>,
                          cute::SM90::GMMA::Major::K, cute::SM90::GMMA::Major::K>());
template <typename T, int N>
using RsOp = decltype(cute::SM90::GMMA::rs_op_selector<
                      typename CuteType<T>::type, typename CuteType<T>::type, float,
                      cute::Shape<cute::_64, cute::Int<N>, cute::_16>,
                      cute::SM90::GMMA::Major::K, cute::SM90::GMMA::Major::MN>());

template <class Op, size_t... I>
__device__ __forceinline__ void mma_ss(uint64_t a, uint64_t b, float* d, cute::SM90::GMMA::ScaleOut scale,
                                       std::index_sequence<I...>) {
  Op::fma(a, b, d[I]..., scale);
}
template <class Op, size_t... I>
__device__ __forceinline__ void mma_rs(const uint32_t (&a)[4], uint64_t b, float* d,
                                       std::index_sequence<I...>) {
  Op::fma(a[0], a[1], a[2], a[3], b, d[I]..., cute::SM90::GMMA::ScaleOut::One);
}

template <int N>
__device__ __forceinline__ void fence_accumulators(float* d) {
#pragma unroll
  for (int i = 0; i < N; ++i) cute::warpgroup_fence_operand(d[i]);
}

// K-major e4m3 operand (an fp8 cache's Q or K) in an fp8_swz byte tile ([rows][D] bytes), which
// is the canonical GMMA layout: SW128 at D = 128 (128-byte rows, 1 KiB atoms of 8 rows), SW64 at
// D = 64 (64-byte rows, 512-byte atoms). K-step kk (32 values) starts 32 * kk bytes into a row.
template <int D>
__host__ __device__ constexpr uint64_t e4m3_desc(uint32_t tile, int kk) {
  static_assert(D == 64 || D == 128, "the warp-specialized kernel's head dims");
  constexpr uint32_t kAtom = 8 * D;
  constexpr uint32_t kLayoutType = D == 128 ? 1 : 2;  // SW128, SW64
  const uint32_t lo = (tile >> 4) + 2 * kk + (1u << 16);  // leading byte offset 16
  return (uint64_t((kAtom >> 4) | (kLayoutType << 30)) << 32) | lo;
}
template <int D>
__device__ __forceinline__ uint64_t kmajor_desc_e4m3(const void* tile, int kk) {
  return e4m3_desc<D>(smem_addr(tile), kk);
}

// S = Q K^T for m64 tile mt of an fp8 item: Q and K as e4m3 bytes (kmajor_desc_e4m3), 32 values
// per k-step, half bf16's wgmmas; issued and committed as one group, not waited for.
template <class Cfg, int NK>
__device__ __forceinline__ void issue_qk_e4m3(const void* sQ, int mt, const void* sK, float (&s)[NK / 8][4]) {
  using Op = SsOpE4m3<NK>;
  const uint8_t* q = static_cast<const uint8_t*>(sQ) + mt * 64 * Cfg::D;
  float* sf = &s[0][0];
  fence_accumulators<NK / 2>(sf);
  cute::warpgroup_arrive();
#pragma unroll
  for (int kk = 0; kk < Cfg::D / 32; ++kk)
    mma_ss<Op>(kmajor_desc_e4m3<Cfg::D>(q, kk), kmajor_desc_e4m3<Cfg::D>(sK, kk), sf,
               kk == 0 ? cute::SM90::GMMA::ScaleOut::Zero : cute::SM90::GMMA::ScaleOut::One,
               std::make_index_sequence<NK / 2>{});
  cute::warpgroup_commit_batch();
}

// S = Q K^T for m64 tile mt of sQ (a [kRows x D] SW128 tile) against the NK keys of sK: issued and
// committed as one wgmma group, not waited for.
template <class Cfg, int NK>
__device__ __forceinline__ void issue_qk(const typename Cfg::T* sQ, int mt, const typename Cfg::T* sK,
                                         float (&s)[NK / 8][4]) {
  using T = typename Cfg::T;
  float* sf = &s[0][0];
  fence_accumulators<NK / 2>(sf);
  cute::warpgroup_arrive();
#pragma unroll
  for (int kk = 0; kk < Cfg::D / 16; ++kk)
    mma_ss<SsOp<T, NK>>(kmajor_desc<T, Cfg::kPrefillRows>(sQ + m64_slice(mt), kk),
                        kmajor_desc<T, NK>(sK, kk), sf,
                        kk == 0 ? cute::SM90::GMMA::ScaleOut::Zero : cute::SM90::GMMA::ScaleOut::One,
                        std::make_index_sequence<NK / 2>{});
  cute::warpgroup_commit_batch();
}

// O += P V with P (probabilities of one m64 tile) packed from s into registers: one wgmma group,
// not waited for. The P registers stay live until the caller waits.
template <class Cfg, int NK>
__device__ __forceinline__ void issue_pv(const uint32_t (&p)[NK / 16][4], const typename Cfg::T* sV,
                                         float (&o)[Cfg::D / 8][4]) {
  using T = typename Cfg::T;
  float* of = &o[0][0];
  fence_accumulators<Cfg::D / 2>(of);
  cute::warpgroup_arrive();
#pragma unroll
  for (int kk = 0; kk < NK / 16; ++kk)
    mma_rs<RsOp<T, Cfg::D>>(p[kk], mnmajor_desc<T, NK, Cfg::D>(sV, kk), of,
                            std::make_index_sequence<Cfg::D / 2>{});
  cute::warpgroup_commit_batch();
}

// S = Q K^T of every m64 tile of sQ against the NK keys of sK, one wgmma group per m-tile.
template <class Cfg, int NK>
__device__ __forceinline__ void issue_scores(const typename Cfg::T* sQ, const typename Cfg::T* sK,
                                             float (&s)[Cfg::kPrefillMTiles][NK / 8][4]) {
#pragma unroll
  for (int mt = 0; mt < Cfg::kPrefillMTiles; ++mt) issue_qk<Cfg, NK>(sQ, mt, sK, s[mt]);
}

// The whole CTA (one warpgroup), one K/V tile: the kPrefillMTiles m64 tiles of query rows in sQ
// against the NK keys of sK/sV (all SW128 tiles). Same contract as warp_attend, with warp w holding
// rows 64*mt + 16*w of each m-tile. Both S = Q K^T products are issued at once, then both softmaxes
// run, then both P V products. The schedule is fixed at compile time: ptxas serialises wgmma
// around data-dependent waits.
template <class Cfg, int NK, class Mods>
__device__ __forceinline__ void warpgroup_attend(WarpState<Cfg, Cfg::kPrefillMTiles>& st,
                                                 const typename Cfg::T* sQ, const typename Cfg::T* sK,
                                                 const typename Cfg::T* sV, int key0, int kv_end,
                                                 const int (&row_pos)[Cfg::kPrefillMTiles][2],
                                                 const PodParams& p) {
  using T = typename Cfg::T;
  constexpr int M = Cfg::kPrefillMTiles;
  float s[M][NK / 8][4];
  uint32_t pf[M][NK / 16][4];  // P, packed

  issue_scores<Cfg, NK>(sQ, sK, s);
  // Both m-tiles' softmaxes in one block, so their dependent chains (row max, shuffles, exp2, sum)
  // interleave: waiting for S_1 between them, to overlap it with the first softmax, serialised
  // the two chains and measured slower (docs/design.md, "Pipelines and barriers").
  cute::warpgroup_wait<0>();
  float alpha[M][2];
  bool moved = false;
#pragma unroll
  for (int mt = 0; mt < M; ++mt) {
    fence_accumulators<NK / 2>(&s[mt][0][0]);
    online_softmax<Cfg, M, NK, Mods>(st, mt, s[mt], key0, kv_end, row_pos[mt], p, alpha[mt]);
    moved |= alpha[mt][0] != 1.f || alpha[mt][1] != 1.f;
  }
  if (__any_sync(0xffffffff, moved))
#pragma unroll
    for (int mt = 0; mt < M; ++mt) rescale_o<Cfg, M>(st, mt, alpha[mt]);
#pragma unroll
  for (int mt = 0; mt < M; ++mt) {
#pragma unroll
    for (int kk = 0; kk < NK / 16; ++kk) p_fragment<T, NK>(s[mt], kk, pf[mt][kk]);
    issue_pv<Cfg, NK>(pf[mt], sV, st.o[mt]);
  }
  cute::warpgroup_wait<0>();
#pragma unroll
  for (int mt = 0; mt < M; ++mt) fence_accumulators<Cfg::D / 2>(&st.o[mt][0][0]);
}

}  // namespace pod::sm90
#endif  // POD_WGMMA_PREFILL
