// Global -> shared copies of one work item's query rows and of one K/V tile gathered from the
// paged cache (any block/token/head strides; the head dim is contiguous). The Cfg::kThreads threads
// of one team take part; tid is a thread's index in it.
#pragma once
#include "ptx.cuh"
#include "tile_config.cuh"

namespace pod {

// Where (row, col) of a [rows x D] tile lives in shared memory, for the mma.sync (ldmatrix) path;
// the Hopper path has its own (sm90::Sw128Layout). col is a multiple of 8.
template <class Cfg>
struct SwzLayout {
  __device__ __forceinline__ static int at(int row, int col) { return Cfg::swz(row, col); }
};

// One 16-byte chunk of e4m3 values at src (16 dims) as 16 fp16 values (exact): the first 8 at lo,
// the rest at hi. In dim order, or with kScoreOrder as an fp8 decode tile's scores read the query
// (warp_attend): bytes 0, 1, 4, 5, 8, 9, 12, 13 at lo and 2, 3, 6, 7, 10, 11, 14, 15 at hi, the
// dims that K's byte fragments hold at the k positions of an m16n8k16 A fragment.
template <bool kScoreOrder = false>
__device__ __forceinline__ void convert_chunk_fp8(const uint8_t* src, __half* lo, __half* hi) {
  const uint4 r = *reinterpret_cast<const uint4*>(src);
  if constexpr (kScoreOrder) {
    *reinterpret_cast<uint4*>(lo) = make_uint4(e4m3x2_to_half2(r.x), e4m3x2_to_half2(r.y),
                                               e4m3x2_to_half2(r.z), e4m3x2_to_half2(r.w));
    *reinterpret_cast<uint4*>(hi) = make_uint4(e4m3x2_to_half2<true>(r.x), e4m3x2_to_half2<true>(r.y),
                                               e4m3x2_to_half2<true>(r.z), e4m3x2_to_half2<true>(r.w));
  } else {
    *reinterpret_cast<uint4*>(lo) = make_uint4(e4m3x2_to_half2(r.x), e4m3x2_to_half2<true>(r.x),
                                               e4m3x2_to_half2(r.y), e4m3x2_to_half2<true>(r.y));
    *reinterpret_cast<uint4*>(hi) = make_uint4(e4m3x2_to_half2(r.z), e4m3x2_to_half2<true>(r.z),
                                               e4m3x2_to_half2(r.w), e4m3x2_to_half2<true>(r.w));
  }
}

// The source of each 16-byte chunk of an item's query rows, for elements of Elem (the 16-bit
// type, or uint8_t for an fp8 query): copy(r, c, src, valid) for row r = token * nh + head of the
// item and chunk c (16 / sizeof(Elem) values) of it, spread over the team; rows past the item
// and columns past the head dim are not valid (to be zero-filled, never written out).
template <class Cfg, typename Elem, class Copy>
__device__ __forceinline__ void for_each_query_chunk(const PodParams& p, const WorkItem& it, int rows,
                                                     int tid, Copy&& copy) {
  constexpr int kChunkElems = 16 / sizeof(Elem), kChunks = Cfg::D / kChunkElems;
  const Elem* q = static_cast<const Elem*>(p.q);
  const int used = it.n_tok * it.nh;
  for (int idx = tid; idx < rows * kChunks; idx += Cfg::kThreads) {
    const int r = idx / kChunks, c = idx % kChunks;
    const bool valid = r < used && c * kChunkElems < p.head_dim;
    const int t = valid ? r / it.nh : 0;
    const int h = it.kv_head * p.group + it.h0 + (valid ? r - t * it.nh : 0);
    copy(r, c, q + (it.q_start + t) * p.q_stride_tok + h * p.q_stride_head + c * kChunkElems, valid);
  }
}

template <class Cfg, class Layout>
__device__ __forceinline__ void load_query_rows(typename Cfg::T* sQ, const PodParams& p,
                                                const WorkItem& it, int rows, int tid) {
  for_each_query_chunk<Cfg, typename Cfg::T>(p, it, rows, tid, [&](int r, int c, const void* src, bool valid) {
    cp_async_16(sQ + Layout::at(r, c * 8), src, valid);
  });
}

// Which 16-byte column chunk c of which kKeysPerThread consecutive keys (from key0) a thread of
// the team copies in a K/V tile of Elem values; those keys lie in one page (tiles start at an
// item's kv_start, a multiple of 64 (plan.py's SPLIT_ALIGN), plus whole tiles, so at multiples of
// min(kKeys, 64), and kKeysPerThread divides 16, the smallest block size): one block-table read
// per thread and tile instead of one per key (11% faster over the benchmark grid on an H100).
template <class Cfg, int kKeys, typename Elem>
struct KvChunkMap {
  static constexpr int kChunkElems = 16 / sizeof(Elem);
  static constexpr int kChunks = Cfg::D / kChunkElems;
  static constexpr int kKeysPerThread = kKeys * kChunks / Cfg::kThreads;
  static_assert(kKeysPerThread >= 1 && 16 % kKeysPerThread == 0, "a thread's keys must share a page");
  int c, key0;
  __device__ __forceinline__ explicit KvChunkMap(int tid)
      : c(tid % kChunks), key0(tid / kChunks * kKeysPerThread) {}
};

// Keys [tile_start, tile_start + kKeys) of K and V, chunk by chunk as KvChunkMap assigns them:
// copy(j, k_src, v_src, valid) for the thread's key key0 + j. Keys at or past kv_end are not valid
// (to be zero-filled, so that masked probabilities, exactly 0, never meet uninitialised values),
// and neither are columns past the head dim.
template <class Cfg, int kKeys, typename Elem, class Copy>
__device__ __forceinline__ void for_each_kv_chunk(const PodParams& p, const WorkItem& it, int tile_start,
                                                  int tid, Copy&& copy) {
  using Map = KvChunkMap<Cfg, kKeys, Elem>;
  const Map m(tid);
  const int pos0 = tile_start + m.key0;
  const int page = pos0 < it.kv_end ? __ldg(p.block_table + it.req * p.bt_stride + (pos0 >> p.log2_block_size)) : 0;
  const int off = pos0 & ((1 << p.log2_block_size) - 1);
  // Only the page's offset needs 64 bits (one wide multiply); within a page the offsets fit 32 bits
  // (the op checks the strides). Past kv_end the address still lies in the same page (a thread's
  // keys share one) and a zero-fill copy reads nothing, so the source steps per key, unclamped.
  const int k_tok = int(p.k_stride_tok), v_tok = int(p.v_stride_tok);
  const uint32_t upage = page;  // non-negative: unsigned 32 x 32 -> 64 is one instruction
  const Elem* ks = static_cast<const Elem*>(p.k) + uint64_t(upage) * uint32_t(p.k_stride_blk) +
                   (off * k_tok + it.kv_head * int(p.k_stride_head) + m.c * Map::kChunkElems);
  const Elem* vs = static_cast<const Elem*>(p.v) + uint64_t(upage) * uint32_t(p.v_stride_blk) +
                   (off * v_tok + it.kv_head * int(p.v_stride_head) + m.c * Map::kChunkElems);
  // Compared with the unrolled j: one compare per key; a column past the head dim has none valid.
  const int num_valid = m.c * Map::kChunkElems < p.head_dim ? it.kv_end - pos0 : 0;
#pragma unroll
  for (int j = 0; j < Map::kKeysPerThread; ++j, ks += k_tok, vs += v_tok) copy(j, ks, vs, j < num_valid);
}

template <class Cfg, int kKeys, class Layout>
__device__ __forceinline__ void load_kv_tile(typename Cfg::T* sK, typename Cfg::T* sV,
                                             const PodParams& p, const WorkItem& it,
                                             int tile_start, int tid) {
  const KvChunkMap<Cfg, kKeys, typename Cfg::T> m(tid);
  for_each_kv_chunk<Cfg, kKeys, typename Cfg::T>(p, it, tile_start, tid,
                                                 [&](int j, const void* ks, const void* vs, bool valid) {
    cp_async_16(sK + Layout::at(m.key0 + j, m.c * 8), ks, valid);
    cp_async_16(sV + Layout::at(m.key0 + j, m.c * 8), vs, valid);
  });
}

// fp8 caches: query rows and K/V tiles are copied as bytes (the walks above with byte elements)
// into byte tiles ([rows or keys][D] bytes, fp8_swz). Decode tiles compute on K's and V's bytes as
// they are and convert the query once per item (in score order); prefill tiles convert V (and, in
// the two-CTA kernel, Q and K) into a 16-bit tile of the math's layout. Each thread converts
// exactly the 16-byte chunks it copied, so its own cp.async wait suffices before it converts (no
// barrier between copy and conversion).
template <class Cfg>
__device__ __forceinline__ void copy_query_rows_fp8(uint8_t* staged, const PodParams& p, const WorkItem& it,
                                                    int rows, int tid) {
  for_each_query_chunk<Cfg, uint8_t>(p, it, rows, tid, [&](int r, int c, const void* src, bool valid) {
    cp_async_16(staged + fp8_swz<Cfg::D>(r, c), src, valid);
  });
}
template <class Cfg, class Layout, bool kScoreOrder = false>
__device__ __forceinline__ void convert_query_rows_fp8(const uint8_t* staged, typename Cfg::T* sQ, int rows,
                                                       int tid) {
  constexpr int kChunks = Cfg::D / 16;  // for_each_query_chunk's chunks of bytes
  for (int idx = tid; idx < rows * kChunks; idx += Cfg::kThreads) {
    const int r = idx / kChunks, c = idx % kChunks;
    convert_chunk_fp8<kScoreOrder>(staged + fp8_swz<Cfg::D>(r, c), sQ + Layout::at(r, c * 16),
                                   sQ + Layout::at(r, c * 16 + 8));
  }
}

template <class Cfg, int kKeys>
__device__ __forceinline__ void copy_kv_tile_fp8(uint8_t* stK, uint8_t* stV, const PodParams& p,
                                                 const WorkItem& it, int tile_start, int tid) {
  const KvChunkMap<Cfg, kKeys, uint8_t> m(tid);
  for_each_kv_chunk<Cfg, kKeys, uint8_t>(p, it, tile_start, tid,
                                         [&](int j, const void* ks, const void* vs, bool valid) {
    cp_async_16(stK + fp8_swz<Cfg::D>(m.key0 + j, m.c), ks, valid);
    cp_async_16(stV + fp8_swz<Cfg::D>(m.key0 + j, m.c), vs, valid);
  });
}

// One K or V tile's bytes (copied by copy_kv_tile_fp8, whose chunks each thread converts) into a
// 16-bit tile of the math's layout.
template <class Cfg, int kKeys, class Layout>
__device__ __forceinline__ void convert_tile_fp8(const uint8_t* staged, typename Cfg::T* dst, int tid) {
  using Map = KvChunkMap<Cfg, kKeys, uint8_t>;
  const Map m(tid);
#pragma unroll
  for (int j = 0; j < Map::kKeysPerThread; ++j) {
    const int key = m.key0 + j;
    convert_chunk_fp8(staged + fp8_swz<Cfg::D>(key, m.c), dst + Layout::at(key, m.c * 16),
                      dst + Layout::at(key, m.c * 16 + 8));
  }
}

}  // namespace pod
