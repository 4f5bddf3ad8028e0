// Host-side check of the Hopper prefill tile's shared-memory layout and wgmma descriptors against
// CuTe (csrc/pod/attention_tile_sm90.cuh). Built and run by tests/test_sm90_layout.py; no GPU needed.
#include <cstdio>

#include <cute/atom/mma_traits_sm90_gmma.hpp>
#include <cute/tensor.hpp>

#include "pod/attention_tile_sm90.cuh"

using namespace cute;
using namespace cute::SM90::GMMA;
using T = cute::bfloat16_t;

static int failures = 0;
#define EXPECT(cond, ...)          \
  if (!(cond)) {                   \
    ++failures;                    \
    std::printf(__VA_ARGS__);      \
  }

alignas(1024) static T buf[256 * 256];

// sw128_desc for an operand `offset` bytes into a tile at shared address `tile`, against CuTe's
// descriptor of the same slice (cute_desc): every field equal, the start being (tile + offset) >> 4.
// Shared addresses are synthetic (CuTe's host descriptor holds a host address), up to the top of
// the 227 KB a CTA can have.
void check_desc(GmmaDescriptor cute_desc, uint32_t tile, uint32_t offset, uint32_t lbo, const char* what) {
  for (uint32_t base : {0u, 1024u, 65536u, 131072u, 163840u}) {
    GmmaDescriptor ours, want = cute_desc;
    ours.desc_ = pod::sm90::sw128_desc(base + tile, offset, lbo);
    want.bitfield.start_address_ = (base + tile + offset) >> 4;
    EXPECT(ours.desc_ == want.desc_, "%s: descriptor %016llx, CuTe's %016llx (tile at %u)\n", what,
           (unsigned long long)ours.desc_, (unsigned long long)want.desc_, base + tile);
  }
}

// K-major tile [kRows x kD] (Q as A, K as B): offsets, and per m-slice of kSliceRows rows (the
// wgmma A operand is 64 rows) and 16-column step, the descriptor strides and the start offset
// issue_qk uses (m64_slice, then kmajor_desc's column step).
template <int kRows, int kD, int kSliceRows = kRows>
void check_kmajor() {
  Tensor t = make_tensor(make_smem_ptr(buf), tile_to_shape(Layout_K_SW128_Atom<T>{}, Shape<Int<kRows>, Int<kD>>{}));
  for (int r = 0; r < kRows; ++r)
    for (int c = 0; c < kD; ++c)
      EXPECT(&t(r, c) - buf == pod::sm90::sw128<kRows>(r, c), "kmajor %dx%d (%d,%d)\n", kRows, kD, r, c);
  for (int mt = 0; mt < kRows / kSliceRows; ++mt)
    for (int kk = 0; kk < kD / 16; ++kk) {
      auto slice = local_tile(t, Shape<Int<kSliceRows>, _16>{}, make_coord(mt, kk));
      GmmaDescriptor d = make_gmma_desc<Major::K>(slice);
      EXPECT(d.bitfield.layout_type_ == 1 && d.bitfield.leading_byte_offset_ == 16 / 16 &&
                 d.bitfield.stride_byte_offset_ == pod::sm90::kAtomBytes / 16 && d.bitfield.base_offset_ == 0,
             "kmajor %dx%d mt=%d kk=%d descriptor strides\n", kRows, kD, mt, kk);
      const int start = pod::sm90::m64_slice(mt) + pod::sm90::sw128<kRows>(0, 16 * kk);
      EXPECT(&slice(0, 0) - buf == start,
             "kmajor %dx%d start mt=%d kk=%d\n", kRows, kD, mt, kk);
      check_desc(d, sizeof(T) * pod::sm90::m64_slice(mt), sizeof(T) * pod::sm90::sw128<kRows>(0, 16 * kk),
                 16, "kmajor");
    }
}

// V tile [kKeys x kD] stored by key, read as the MN-major B operand (N = kD, K = keys).
template <int kKeys, int kD>
void check_mnmajor() {
  Tensor t = make_tensor(make_smem_ptr(buf),
                         tile_to_shape(Layout_MN_SW128_Atom<T>{}, Shape<Int<kD>, Int<kKeys>>{}, Step<_2, _1>{}));
  for (int key = 0; key < kKeys; ++key)
    for (int c = 0; c < kD; ++c)
      EXPECT(&t(c, key) - buf == pod::sm90::sw128<kKeys>(key, c), "mnmajor %dx%d (%d,%d)\n", kKeys, kD, key, c);
  constexpr uint32_t lbo = pod::sm90::kMnMajorLbo<kKeys, kD>;
  for (int kk = 0; kk < kKeys / 16; ++kk) {
    auto slice = local_tile(t, Shape<Int<kD>, _16>{}, make_coord(0, kk));
    GmmaDescriptor d = make_gmma_desc<Major::MN>(slice);
    EXPECT(d.bitfield.layout_type_ == 1 && d.bitfield.leading_byte_offset_ == lbo / 16 &&
               d.bitfield.stride_byte_offset_ == pod::sm90::kAtomBytes / 16 && d.bitfield.base_offset_ == 0,
           "mnmajor %dx%d kk=%d descriptor strides (lbo %d sbo %d)\n", kKeys, kD, kk,
           int(d.bitfield.leading_byte_offset_), int(d.bitfield.stride_byte_offset_));
    EXPECT(&slice(0, 0) - buf == pod::sm90::sw128<kKeys>(16 * kk, 0), "mnmajor start kk=%d\n", kk);
    check_desc(d, 0, sizeof(T) * pod::sm90::sw128<kKeys>(16 * kk, 0), lbo, "mnmajor");
  }
}

// An fp8 cache's Q and K tiles ([kRows x kD] e4m3 bytes, fp8_swz): offsets against CuTe's K-major
// SW128 (kD = 128) or SW64 (kD = 64) atom of 8-bit values, and e4m3_desc per m64 slice and
// 32-value k-step against make_gmma_desc.
template <int kRows, int kD, int kSliceRows = kRows>
void check_kmajor_e4m3() {
  using E = cute::float_e4m3_t;
  E* b8 = reinterpret_cast<E*>(buf);
  using Atom = std::conditional_t<kD == 128, Layout_K_SW128_Atom<E>, Layout_K_SW64_Atom<E>>;
  Tensor t = make_tensor(make_smem_ptr(b8), tile_to_shape(Atom{}, Shape<Int<kRows>, Int<kD>>{}));
  for (int r = 0; r < kRows; ++r)
    for (int c = 0; c < kD; ++c)
      EXPECT(&t(r, c) - b8 == pod::fp8_swz<kD>(r, c / 16) + c % 16, "e4m3 %dx%d (%d,%d)\n", kRows, kD, r, c);
  for (int mt = 0; mt < kRows / kSliceRows; ++mt)
    for (int kk = 0; kk < kD / 32; ++kk) {
      auto slice = local_tile(t, Shape<Int<kSliceRows>, _32>{}, make_coord(mt, kk));
      GmmaDescriptor want = make_gmma_desc<Major::K>(slice);
      for (uint32_t base : {0u, 1024u, 65536u, 163840u}) {
        const uint32_t start = base + uint32_t(&slice(0, 0) - b8);
        want.bitfield.start_address_ = start >> 4;
        GmmaDescriptor ours;
        ours.desc_ = pod::sm90::e4m3_desc<kD>(base + mt * kSliceRows * kD, kk);
        EXPECT(ours.desc_ == want.desc_, "e4m3 %dx%d mt=%d kk=%d: descriptor %016llx, CuTe's %016llx\n", kRows,
               kD, mt, kk, (unsigned long long)ours.desc_, (unsigned long long)want.desc_);
      }
    }
}

int main() {
  check_kmajor_e4m3<128, 128, 64>();  // fp8 Q and K at head dims 128 and 64
  check_kmajor_e4m3<128, 64, 64>();
  check_kmajor_e4m3<64, 128>();
  check_kmajor_e4m3<64, 64>();
  check_kmajor<128, 64, 64>();   // Q, D=64: 128 rows read as two m64 slices
  check_kmajor<128, 128, 64>();  // Q, D=128
  check_kmajor<64, 256>();       // Q, D=256 (one m64 tile)
  check_kmajor<64, 64>();        // K, D=64 and D=128 (64-key tiles)
  check_kmajor<64, 128>();
  check_kmajor<32, 256>();       // K, D=256 (32-key tiles)
  check_mnmajor<64, 64>();
  check_mnmajor<64, 128>();
  check_mnmajor<32, 256>();
  std::printf("%d failures\n", failures);
  return failures != 0;
}
