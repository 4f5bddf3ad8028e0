// Global -> shared copies of one work item's query rows and of one K/V tile gathered from the
// paged cache (any block/token/head strides; the head dim is contiguous). The Cfg::kThreads threads
// of one team take part; tid is a thread's index in it.
#pragma once
#include <cuda_fp8.h>
#include "ptx.cuh"
#include "tile_config.cuh"

namespace pod {

// Where (row, col) of a [rows x D] tile lives in shared memory, for the mma.sync (ldmatrix) path;
// the Hopper path has its own (sm90::Sw128Layout). col is a multiple of 8.
template <class Cfg>
struct SwzLayout {
  __device__ __forceinline__ static int at(int row, int col) { return Cfg::swz(row, col); }
};

// Eight e4m3 values (bytes, lowest first) as eight fp16 values: exact.
__device__ __forceinline__ uint4 e4m3x8_to_half8(uint2 x) {
  auto pair = [](uint32_t w) {
    const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(w), __NV_E4M3);
    return uint32_t(h.x) | (uint32_t(h.y) << 16);
  };
  return make_uint4(pair(x.x & 0xffff), pair(x.x >> 16), pair(x.y & 0xffff), pair(x.y >> 16));
}

// Query rows r = token * nh + head of the item; rows past the item and columns past the head dim
// are zero-filled (never written out).
template <class Cfg, class Layout>
__device__ __forceinline__ void load_query_rows(typename Cfg::T* sQ, const PodParams& p,
                                                const WorkItem& it, int rows, int tid) {
  using T = typename Cfg::T;
  const T* q = static_cast<const T*>(p.q);
  const int used = it.n_tok * it.nh;
  for (int idx = tid; idx < rows * Cfg::kChunks; idx += Cfg::kThreads) {
    const int r = idx / Cfg::kChunks, c = idx % Cfg::kChunks;
    const bool valid = r < used && c * 8 < p.head_dim;
    const int t = valid ? r / it.nh : 0;
    const int h = it.kv_head * p.group + it.h0 + (valid ? r - t * it.nh : 0);
    const T* src = q + (it.q_start + t) * p.q_stride_tok + h * p.q_stride_head + c * 8;
    cp_async_16(sQ + Layout::at(r, c * 8), src, valid);
  }
}

// Keys [tile_start, tile_start + kKeys) of K and V; keys at or past kv_end are zero-filled so that
// masked probabilities (exactly 0) never meet uninitialised values, and so are columns past the
// head dim. Each thread copies one 16-byte column chunk of kKeysPerThread consecutive keys, which
// lie in one page (tile starts are multiples of kKeys, and kKeysPerThread divides 16, the smallest
// block size): one block-table read per thread and tile instead of one per key (11% faster over
// the benchmark grid on an H100).
template <class Cfg, int kKeys, class Layout>
__device__ __forceinline__ void load_kv_tile(typename Cfg::T* sK, typename Cfg::T* sV,
                                             const PodParams& p, const WorkItem& it,
                                             int tile_start, int tid) {
  using T = typename Cfg::T;
  constexpr int kKeysPerThread = kKeys * Cfg::kChunks / Cfg::kThreads;
  static_assert(kKeysPerThread >= 1 && 16 % kKeysPerThread == 0, "a thread's keys must share a page");
  const int c = tid % Cfg::kChunks;
  const int key0 = tid / Cfg::kChunks * kKeysPerThread;
  const int pos0 = tile_start + key0;
  const int page = pos0 < it.kv_end ? __ldg(p.block_table + it.req * p.bt_stride + (pos0 >> p.log2_block_size)) : 0;
  const int off = pos0 & ((1 << p.log2_block_size) - 1);
  // Only the page's offset needs 64 bits (one wide multiply); within a page the offsets fit 32 bits
  // (the op checks the strides). Past kv_end the address still lies in the same page (a thread's
  // keys share one) and a zero-fill copy reads nothing, so the source steps per key, unclamped.
  const int k_tok = int(p.k_stride_tok), v_tok = int(p.v_stride_tok);
  const uint32_t upage = page;  // non-negative: unsigned 32 x 32 -> 64 is one instruction
  const T* ks = static_cast<const T*>(p.k) + uint64_t(upage) * uint32_t(p.k_stride_blk) +
                (off * k_tok + it.kv_head * int(p.k_stride_head) + c * 8);
  const T* vs = static_cast<const T*>(p.v) + uint64_t(upage) * uint32_t(p.v_stride_blk) +
                (off * v_tok + it.kv_head * int(p.v_stride_head) + c * 8);
  // Compared with the unrolled j: one compare per key; a column past the head dim has none valid.
  const int num_valid = c * 8 < p.head_dim ? it.kv_end - pos0 : 0;
#pragma unroll
  for (int j = 0; j < kKeysPerThread; ++j, ks += k_tok, vs += v_tok) {
    const bool valid = j < num_valid;
    cp_async_16(sK + Layout::at(key0 + j, c * 8), ks, valid);
    cp_async_16(sV + Layout::at(key0 + j, c * 8), vs, valid);
  }
}

// fp8 caches: query rows and K/V tiles are copied as bytes into a staging stage ([keys][D] bytes per K and V,
// unswizzled) and converted from there into a 16-bit tile of the math's layout. Each thread
// converts exactly the 16-byte chunks it copied, so its own cp.async wait suffices before it
// converts (no barrier between copy and conversion). The mapping mirrors load_kv_tile's.
template <class Cfg, int kKeys>
struct Fp8TileMap {
  static constexpr int kChunks = Cfg::D / 16;  // 16 e4m3 values per chunk
  static constexpr int kKeysPerThread = kKeys * kChunks / Cfg::kThreads;
  static_assert(kKeysPerThread >= 1 && 16 % kKeysPerThread == 0, "a thread's keys must share a page");
  int c, key0;
  __device__ __forceinline__ explicit Fp8TileMap(int tid)
      : c(tid % kChunks), key0(tid / kChunks * kKeysPerThread) {}
  __device__ __forceinline__ int staged(int j) const { return (key0 + j) * Cfg::D + c * 16; }
};

// The query rows of an fp8 item (load_query_rows's rows) as bytes into `staged` ([rows][D]),
// then, by the same threads, into the 16-bit query tile.
template <class Cfg>
__device__ __forceinline__ void copy_query_rows_fp8(uint8_t* staged, const PodParams& p, const WorkItem& it,
                                                    int rows, int tid) {
  constexpr int kChunks = Cfg::D / 16;
  const uint8_t* q = static_cast<const uint8_t*>(p.q);
  const int used = it.n_tok * it.nh;
  for (int idx = tid; idx < rows * kChunks; idx += Cfg::kThreads) {
    const int r = idx / kChunks, c = idx % kChunks;
    const bool valid = r < used && c * 16 < p.head_dim;
    const int t = valid ? r / it.nh : 0;
    const int h = it.kv_head * p.group + it.h0 + (valid ? r - t * it.nh : 0);
    cp_async_16(staged + r * Cfg::D + c * 16, q + (it.q_start + t) * p.q_stride_tok + h * p.q_stride_head + c * 16,
                valid);
  }
}
template <class Cfg, class Layout>
__device__ __forceinline__ void convert_query_rows_fp8(const uint8_t* staged, typename Cfg::T* sQ, int rows,
                                                       int tid) {
  constexpr int kChunks = Cfg::D / 16;
  for (int idx = tid; idx < rows * kChunks; idx += Cfg::kThreads) {
    const int r = idx / kChunks, c = idx % kChunks;
    const uint4 raw = *reinterpret_cast<const uint4*>(staged + r * Cfg::D + c * 16);
    *reinterpret_cast<uint4*>(sQ + Layout::at(r, c * 16)) = e4m3x8_to_half8(make_uint2(raw.x, raw.y));
    *reinterpret_cast<uint4*>(sQ + Layout::at(r, c * 16 + 8)) = e4m3x8_to_half8(make_uint2(raw.z, raw.w));
  }
}

template <class Cfg, int kKeys>
__device__ __forceinline__ void copy_kv_tile_fp8(uint8_t* stK, uint8_t* stV, const PodParams& p,
                                                 const WorkItem& it, int tile_start, int tid) {
  using Map = Fp8TileMap<Cfg, kKeys>;
  const Map m(tid);
  const int pos0 = tile_start + m.key0;
  const int page = pos0 < it.kv_end ? __ldg(p.block_table + it.req * p.bt_stride + (pos0 >> p.log2_block_size)) : 0;
  const int off = pos0 & ((1 << p.log2_block_size) - 1);
  const int k_tok = int(p.k_stride_tok), v_tok = int(p.v_stride_tok);
  const uint32_t upage = page;
  const uint8_t* ks = static_cast<const uint8_t*>(p.k) + uint64_t(upage) * uint32_t(p.k_stride_blk) +
                      (off * k_tok + it.kv_head * int(p.k_stride_head) + m.c * 16);
  const uint8_t* vs = static_cast<const uint8_t*>(p.v) + uint64_t(upage) * uint32_t(p.v_stride_blk) +
                      (off * v_tok + it.kv_head * int(p.v_stride_head) + m.c * 16);
  const int num_valid = m.c * 16 < p.head_dim ? it.kv_end - pos0 : 0;
#pragma unroll
  for (int j = 0; j < Map::kKeysPerThread; ++j, ks += k_tok, vs += v_tok) {
    const bool valid = j < num_valid;
    cp_async_16(stK + m.staged(j), ks, valid);
    cp_async_16(stV + m.staged(j), vs, valid);
  }
}

template <class Cfg, int kKeys, class Layout>
__device__ __forceinline__ void convert_kv_tile_fp8(const uint8_t* stK, const uint8_t* stV,
                                                    typename Cfg::T* sK, typename Cfg::T* sV, int tid) {
  using Map = Fp8TileMap<Cfg, kKeys>;
  const Map m(tid);
  auto convert = [&](const uint8_t* st, typename Cfg::T* dst, int j) {
    const uint4 raw = *reinterpret_cast<const uint4*>(st + m.staged(j));
    *reinterpret_cast<uint4*>(dst + Layout::at(m.key0 + j, m.c * 16)) = e4m3x8_to_half8(make_uint2(raw.x, raw.y));
    *reinterpret_cast<uint4*>(dst + Layout::at(m.key0 + j, m.c * 16 + 8)) = e4m3x8_to_half8(make_uint2(raw.z, raw.w));
  };
#pragma unroll
  for (int j = 0; j < Map::kKeysPerThread; ++j) {
    convert(stK, sK, j);
    convert(stV, sV, j);
  }
}

}  // namespace pod
