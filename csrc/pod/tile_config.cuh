// Tile shapes and the shared-memory layout of one CTA. Both tile kinds share one layout so a CTA
// can switch between prefill and decode work from one item to the next.
#pragma once
#include "params.cuh"

namespace pod {

template <typename T_, int D_>
struct TileConfig {
  using T = T_;
  static constexpr int D = D_;
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  // Prefill tile: each warp owns kPrefillMTiles m16 MMA tiles of query rows against kPrefillKeys
  // keys per K/V tile. One m-tile and 64 keys measured best over the benchmark grid on an H100
  // (benchmarks/NOTES.md); two m-tiles (each K/V fragment feeding two MMAs) win on long prefills but
  // spill and balance worse. POD_PREFILL_MTILES / POD_PREFILL_KEYS override them in tuning builds.
#ifdef POD_PREFILL_MTILES
  static constexpr int kPrefillMTiles = D <= 128 ? POD_PREFILL_MTILES : 1;
#else
  static constexpr int kPrefillMTiles = 1;
#endif
  static constexpr int kPrefillRows = kWarps * 16 * kPrefillMTiles;
#ifdef POD_PREFILL_KEYS
  static constexpr int kPrefillKeys = D <= 128 ? POD_PREFILL_KEYS : 32;
#else
  static constexpr int kPrefillKeys = D <= 128 ? 64 : 32;  // 32 at D=256 keeps two CTAs per SM
#endif
  // Decode tile: 16 rows (a GQA group packed into one MMA tile); the warps split the keys instead.
  static constexpr int kDecodeRows = 16;
  static constexpr int kDecodeWarpKeys = 16;
  static constexpr int kDecodeKeys = D <= 128 ? 64 : 32;  // halved at D=256 for two CTAs per SM
  static constexpr int kDecodeWarps = kDecodeKeys / kDecodeWarpKeys;
  static constexpr int kStages = 2;
  static constexpr int kChunks = D / 8;  // 16-byte chunks per row

  static constexpr int kQElems = kPrefillRows * D;
  static constexpr int kKVElems = (kPrefillKeys > kDecodeKeys ? kPrefillKeys : kDecodeKeys) * D;
  static constexpr size_t kSmemBytes = sizeof(T) * (kQElems + 2 * kStages * kKVElems);
  // Launched with 1 KiB more, so the tiles can start on a 1 KiB boundary (GMMA swizzle atoms).
  static constexpr size_t kSmemAlloc = kSmemBytes + 1024;
  // Decode's cross-warp merge reuses the whole region once the key loop is done.
  static constexpr size_t kMergeBytes = sizeof(float) * kWarps * kDecodeRows * (D + 1);
  static_assert(kMergeBytes <= kSmemBytes, "decode merge scratch must fit the tile region");
  static_assert(kChunks >= 8, "the XOR swizzle needs at least 8 chunks per row");
  static_assert(64 % kPrefillKeys == 0 && 64 % kDecodeKeys == 0, "plan.py aligns KV splits to 64 keys");

  // Offset (elements) of column `col` (a multiple of 8) of row `row` in a swizzled [rows][D] tile:
  // 16-byte chunks XOR-ed with the row so ldmatrix's 8 row addresses hit 8 distinct bank groups.
  __device__ __forceinline__ static int swz(int row, int col) {
    return row * D + ((((col >> 3) ^ row) & 7) | ((col >> 3) & ~7)) * 8;
  }
};

}  // namespace pod
