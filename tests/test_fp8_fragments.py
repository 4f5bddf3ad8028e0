"""The fp8 decode tile's fragments, emulated on the CPU: ldmatrix (.x4, .b16) from byte tiles in the
fp8_swz layout (tile_config.cuh) feeding mma.sync m16n8k32 e4m3 as warp_attend addresses them
(attention_tile.cuh), against Q K^T; V's words regrouped per dim by prmt into m16n8k16 B
fragments, with the permuted accumulator dims merge_decode_warps (merge.cuh) writes back, against
P V; and the layout's bank spread."""

import numpy as np
import pytest


def fp8_swz(d: int, row: int, c: int) -> int:
    """Mirrors tile_config.cuh's fp8_swz: byte offset of 16-byte chunk c of `row`."""
    if d == 64:
        return row * d + ((c ^ (row >> 1)) & 3) * 16
    return row * d + (((c ^ row) & 7) | (c & ~7)) * 16


def ldmatrix_x4(mem, row_addrs):
    """Lane i gets, from matrix m (rows addressed by lanes 8m..8m+7), bytes 4(i%4).. of row i/4."""
    out = np.zeros((32, 4, 4), np.int64)
    for m in range(4):
        for i in range(32):
            a = row_addrs[8 * m + i // 4] + 4 * (i % 4)
            out[i, m] = mem[a:a + 4]
    return out


def mma_m16n8k32(a, b0, b1):
    """PTX's m16n8k32 8-bit fragment layouts: A (16x32) from a[lane][0..3], B (32x8) from b0/b1."""
    A, B = np.zeros((16, 32)), np.zeros((32, 8))
    for lane in range(32):
        g, t = lane // 4, lane % 4
        A[g, 4 * t:4 * t + 4], A[g + 8, 4 * t:4 * t + 4] = a[lane, 0], a[lane, 1]
        A[g, 16 + 4 * t:20 + 4 * t], A[g + 8, 16 + 4 * t:20 + 4 * t] = a[lane, 2], a[lane, 3]
        B[4 * t:4 * t + 4, g], B[16 + 4 * t:20 + 4 * t, g] = b0[lane], b1[lane]
    return A @ B


def store(tile, d):
    mem = np.zeros(tile.size, np.int64)
    for r in range(tile.shape[0]):
        for c in range(d // 16):
            mem[fp8_swz(d, r, c):fp8_swz(d, r, c) + 16] = tile[r, 16 * c:16 * c + 16]
    return mem


@pytest.mark.parametrize("d", [64, 128, 256])
def test_fp8_decode_scores_are_q_k_transposed(d):
    rng = np.random.default_rng(d)
    q, k = rng.integers(-8, 8, (16, d)), rng.integers(-8, 8, (64, d))
    qmem, kmem = store(q, d), store(k, d)
    kw0, nk = 16, 16  # a decode warp's 16-key slice
    got = np.zeros((16, nk))
    for kk in range(d // 32):
        a = ldmatrix_x4(qmem, [fp8_swz(d, lane & 15, 2 * kk + (lane >> 4)) for lane in range(32)])
        for nb in range(nk // 16):
            b = ldmatrix_x4(kmem, [fp8_swz(d, kw0 + nb * 16 + (lane >> 4) * 8 + (lane & 7),
                                           2 * kk + ((lane >> 3) & 1)) for lane in range(32)])
            got[:, 16 * nb:16 * nb + 8] += mma_m16n8k32(a, b[:, 0], b[:, 1])
            got[:, 16 * nb + 8:16 * nb + 16] += mma_m16n8k32(a, b[:, 2], b[:, 3])
    np.testing.assert_array_equal(got, q @ k[kw0:kw0 + nk].T)


def byte_perm(x: int, y: int, sel: int) -> int:
    """CUDA's __byte_perm: result byte i is byte (sel >> 4i) & 7 of the 8 bytes y:x."""
    src = [(x >> 8 * i) & 0xff for i in range(4)] + [(y >> 8 * i) & 0xff for i in range(4)]
    return sum(src[(sel >> 4 * i) & 7] << 8 * i for i in range(4))


def mma_m16n8k16(a, b0, b1):
    """PTX's m16n8k16 16-bit layouts, values already unpacked: A (16x16) from a[lane][0..7], B
    (16x8) from b0[lane] (keys 2t, 2t + 1) and b1[lane] (keys 2t + 8, 2t + 9) of column g."""
    A, B = np.zeros((16, 16)), np.zeros((16, 8))
    for lane in range(32):
        g, t = lane // 4, lane % 4
        A[g, 2 * t:2 * t + 2], A[g + 8, 2 * t:2 * t + 2] = a[lane][0:2], a[lane][2:4]
        A[g, 8 + 2 * t:10 + 2 * t], A[g + 8, 8 + 2 * t:10 + 2 * t] = a[lane][4:6], a[lane][6:8]
        B[2 * t:2 * t + 2, g], B[8 + 2 * t:10 + 2 * t, g] = b0[lane], b1[lane]
    return A @ B


@pytest.mark.parametrize("d", [64, 128, 256])
def test_fp8_decode_values_from_bytes_are_p_v(d):
    rng = np.random.default_rng(d + 1)
    p, v = rng.integers(-8, 8, (16, 16)), rng.integers(0, 256, (64, d))  # v: any byte pattern
    vmem = store(v, d)
    kw0 = 32  # a decode warp's 16-key slice
    a = [[p[lane // 4, 2 * (lane % 4)], p[lane // 4, 2 * (lane % 4) + 1],
          p[lane // 4 + 8, 2 * (lane % 4)], p[lane // 4 + 8, 2 * (lane % 4) + 1],
          p[lane // 4, 8 + 2 * (lane % 4)], p[lane // 4, 9 + 2 * (lane % 4)],
          p[lane // 4 + 8, 8 + 2 * (lane % 4)], p[lane // 4 + 8, 9 + 2 * (lane % 4)]] for lane in range(32)]
    o = np.zeros((d // 8, 32, 4))  # warp_attend's accumulators: [n-tile][lane][C fragment]
    for q in range(d // 32):
        b0, b1 = [[None] * 32 for _ in range(4)], [[None] * 32 for _ in range(4)]
        for lane in range(32):
            g, t = lane // 4, lane % 4
            c, byte = 2 * q + (g >> 2), 4 * (g & 3)

            def word(k):
                at = fp8_swz(d, k, c) + byte
                return sum(int(vmem[at + i]) << 8 * i for i in range(4))
            key = kw0 + 2 * t
            w0, w1, w8, w9 = word(key), word(key + 1), word(key + 8), word(key + 9)
            lo, hi = byte_perm(w0, w1, 0x5140), byte_perm(w0, w1, 0x7362)
            lo8, hi8 = byte_perm(w8, w9, 0x5140), byte_perm(w8, w9, 0x7362)
            pairs = lambda x: (x & 0xff, (x >> 8) & 0xff)  # e4m3x2_to_half2 of the low 16 bits
            for i, (x, x8) in enumerate([(lo, lo8), (lo >> 16, lo8 >> 16), (hi, hi8), (hi >> 16, hi8 >> 16)]):
                b0[i][lane], b1[i][lane] = pairs(x), pairs(x8)
        for i in range(4):
            c_tile = mma_m16n8k16(a, b0[i], b1[i])
            for lane in range(32):
                g, t = lane // 4, lane % 4
                o[4 * q + i, lane] += [c_tile[g, 2 * t], c_tile[g, 2 * t + 1],
                                       c_tile[g + 8, 2 * t], c_tile[g + 8, 2 * t + 1]]
    # merge_decode_warps' fp8 placement: lane t's float4 at 32q + 8t + 4e holds n-tiles 4q..4q+3.
    got = np.full((16, d), np.nan)
    for lane in range(32):
        g, t = lane // 4, lane % 4
        for r in range(2):
            for q in range(d // 32):
                for e in range(2):
                    at = 32 * q + 8 * t + 4 * e
                    got[g + 8 * r, at:at + 4] = [o[4 * q + i, lane, 2 * r + e] for i in range(4)]
    np.testing.assert_array_equal(got, p @ v[kw0:kw0 + 16])


@pytest.mark.parametrize("d", [128, 256])
def test_fp8_decode_value_words_spread_over_all_banks(d):
    # One V word load: lanes (g, t) read key 2t (+ 0, 1, 8 or 9), chunk 2q + g / 4, word g % 4.
    for kw0 in range(0, 64, 16):
        for q in range(d // 32):
            for dk in (0, 1, 8, 9):
                banks = {(fp8_swz(d, kw0 + 2 * (lane % 4) + dk, 2 * q + (lane // 4 >> 2)) + 4 * (lane // 4 & 3))
                         // 4 % 32 for lane in range(32)}
                assert len(banks) == 32


@pytest.mark.parametrize("d", [64, 128, 256])
def test_fp8_swz_spreads_an_ldmatrix_over_all_banks(d):
    # The 8 rows of one 8x16-byte matrix at one chunk: 8 distinct 16-byte slots of 128 bytes.
    for row0 in range(0, 64, 8):
        for c in range(d // 16):
            assert len({fp8_swz(d, row0 + r, c) % 128 // 16 for r in range(8)}) == 8
