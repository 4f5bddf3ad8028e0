// Tile shapes and the shared-memory layout of one CTA. Both tile kinds share one layout so a CTA
// can switch between prefill and decode work from one item to the next.
#pragma once
#include <cuda_fp16.h>
#include <type_traits>
#include "params.cuh"

namespace pod {

// kHopper_: the sm_90a configuration, whose prefill tiles run on wgmma (attention_tile_sm90.cuh).
// kFp8_: an fp8 (e4m3) KV cache and query. Scores run on e4m3 operands; values are converted to
// fp16 (exactly: every e4m3 value is an fp16 value), so T, the type P V and the 16-bit tiles use,
// is __half (tile_loader.cuh, attention_tile.cuh).
template <typename T_, int D_, bool kHopper_ = false, bool kFp8_ = false>
struct TileConfig {
  using T = T_;
  static constexpr int D = D_;
  static constexpr bool kHopper = kHopper_;
  static constexpr bool kFp8 = kFp8_;
  static_assert(!kFp8 || std::is_same_v<T, __half>, "fp8 caches compute in fp16");
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  // Prefill tile: kPrefillMTiles m-tiles of query rows per warp against kPrefillKeys keys per K/V
  // tile. The rows a tile shares each K/V tile between set its arithmetic intensity: K/V tiles
  // come from L2 once per tile, so 64-row tiles cap the prefill near L2 bandwidth (~4.5 TB/s, ~290
  // TFLOP/s at 64 FLOP/B). The Hopper tile therefore takes 128 rows (two m64 wgmma tiles; its
  // accumulators fit the register file up to D=128). The mma.sync tile keeps 1 x m16 per warp and
  // 64 keys, measured best for it; smaller key tiles in deeper rings lost on Hopper for both kinds
  // (docs/design.md, "Tile shapes" and "What was tried and lost").
  static constexpr int kPrefillMTiles = kHopper && D <= 128 ? 2 : 1;
  static constexpr int kMTileRows = kHopper ? 64 : 16;  // rows of one m-tile (wgmma m64, mma m16)
  static constexpr int kPrefillRows = kMTileRows * kPrefillMTiles * (kHopper ? 1 : kWarps);
  // Keys per prefill K/V tile: 32 at D=256 keep two CTAs per SM; 128 in the Hopper tile at D=64,
  // whose accumulators leave the consumers room for a 128-key S tile beside the P in flight (the
  // per-key share of the tile's fixed work halves: 0.87x the time of 64-key tiles on prefill; at
  // D=128 it does not fit beside the decode warpgroup, docs/design.md, "Where the prefill gap is
  // now"). Tiles start at their item's kv_start, so a KV-split's last one may be partial (masked).
  static constexpr int kPrefillKeys = kHopper && D == 64 ? 128 : D > 128 ? 32 : 64;
  // First query row of a warp's m-tile mt: mma.sync warps own consecutive m16 tiles; in a wgmma
  // m64 tile each warp holds a 16-row slice.
  __device__ __forceinline__ static int prefill_row(int warp, int mt) {
    return kHopper ? 64 * mt + 16 * warp : 16 * (kPrefillMTiles * warp + mt);
  }
  // Decode tile: up to 16 rows (a GQA group, or a short query's tokens times the group); the warps
  // split the keys instead (decode_warp_share: 16-bit caches give items over 8 rows two slices per
  // warp, one 8-row half each).
  static constexpr int kDecodeRows = 16;
  static constexpr int kDecodeWarpKeys = 16;
  static constexpr int kDecodeKeys = D <= 128 ? 64 : 32;  // halved at D=256 for two CTAs per SM
  static constexpr int kDecodeWarps = kDecodeKeys / kDecodeWarpKeys;
  static constexpr int kChunks = D / 8;  // 16-byte chunks per row

  // K/V tiles stream through a ring of stages, [stage][K|V][keys][D]; a kind keeps all but one
  // stage in flight.
  static constexpr int kPrefillStages = 2;
  static constexpr int kDecodeStages = 2;
  // Bytes of a team's K/V region of `stages` stages of `keys` keys ([stage][K|V][keys][D]): for
  // an fp8 cache, one 16-bit [K|V] tile that prefill tiles convert into, then the byte stages;
  // decode tiles use the whole region as byte stages (run_item).
  static constexpr size_t ring_bytes(int stages, int keys) {
    return 2 * size_t(keys) * D * (kFp8 ? sizeof(T) + stages : stages * sizeof(T));
  }
  // fp8 decode tiles' byte stages: twice the 16-bit ring's stages, in its shared memory.
  static constexpr int kDecodeByteStages = 2 * kDecodeStages;
  static_assert(!kFp8 || size_t(kDecodeByteStages) * 2 * kDecodeKeys * D <= ring_bytes(kDecodeStages, kDecodeKeys),
                "fp8 decode tiles' byte stages fit the decode region");
  // A decode item's region in run_item's layout: its 16 query rows (fp8: converted to fp16), the
  // ring, and for an fp8 cache the query's bytes after the byte stages.
  static constexpr size_t kDecodeBytes = sizeof(T) * kDecodeRows * D + ring_bytes(kDecodeStages, kDecodeKeys) +
                                         (kFp8 ? size_t(kDecodeRows) * D : 0);
  static constexpr int kQElems = kPrefillRows * D;
  static constexpr size_t kSmemBytes =
      sizeof(T) * kQElems + (ring_bytes(kPrefillStages, kPrefillKeys) > ring_bytes(kDecodeStages, kDecodeKeys)
                                 ? ring_bytes(kPrefillStages, kPrefillKeys)
                                 : ring_bytes(kDecodeStages, kDecodeKeys));
  // Launched with 1 KiB more, so the tiles can start on a 1 KiB boundary (GMMA swizzle atoms).
  static constexpr size_t kSmemAlloc = kSmemBytes + 1024;
  // Decode's cross-warp merge reuses the whole region once the key loop is done.
  static constexpr size_t kMergeBytes = sizeof(float) * kWarps * kDecodeRows * (D + 1);
  static_assert(kMergeBytes <= kDecodeBytes && kDecodeBytes <= kSmemBytes,
                "the decode merge fits the decode region, which fits the tile region");
  static_assert(kChunks >= 8, "the XOR swizzle needs at least 8 chunks per row");
  static_assert(64 % kDecodeKeys == 0, "plan.py aligns KV splits to 64 keys: whole decode tiles");

  // Offset (elements) of column `col` (a multiple of 8) of row `row` in a swizzled [rows][D] tile:
  // 16-byte chunks XOR-ed with the row so ldmatrix's 8 row addresses hit 8 distinct bank groups.
  __device__ __forceinline__ static int swz(int row, int col) {
    return row * D + ((((col >> 3) ^ row) & 7) | ((col >> 3) & ~7)) * 8;
  }
};

// Byte offset of 16-byte chunk c of row `row` in a [rows][D]-byte tile, swizzled so that the 8 rows
// an ldmatrix reads at one chunk lie in distinct banks (rows of 64 bytes pair up per 128).
template <int D>
__host__ __device__ constexpr int fp8_swz(int row, int c) {
  if constexpr (D == 64) return row * D + ((c ^ (row >> 1)) & 3) * 16;
  else return row * D + (((c ^ row) & 7) | (c & ~7)) * 16;
}

}  // namespace pod
