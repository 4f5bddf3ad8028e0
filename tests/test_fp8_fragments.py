"""The fp8 decode tile's fragments, emulated on the CPU: the query converted to fp16 in score order
(convert_chunk_fp8, tile_loader.cuh) and read by ldmatrix from the 16-bit swizzled tile, K's
bytes read by ldmatrix (.x4, .b16) from byte tiles in the fp8_swz layout (tile_config.cuh) and
converted per byte pair into m16n8k16 B fragments, as warp_attend addresses them
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


def store(tile, d):
    mem = np.zeros(tile.size, np.int64)
    for r in range(tile.shape[0]):
        for c in range(d // 16):
            mem[fp8_swz(d, r, c):fp8_swz(d, r, c) + 16] = tile[r, 16 * c:16 * c + 16]
    return mem



def swz(d: int, row: int, col: int) -> int:
    """Mirrors TileConfig::swz: element offset of column col (a multiple of 8) of a 16-bit tile."""
    return row * d + ((((col >> 3) ^ row) & 7) | ((col >> 3) & ~7)) * 8


def convert_query(q, d, score_order):
    """convert_chunk_fp8 of every 16-byte chunk of the query (16 rows) into the 16-bit tile: chunk
    c's bytes go to columns 16c..16c+7 (lo) and 16c+8..16c+15 (hi)."""
    tile = np.zeros(16 * d, np.int64)
    for r in range(16):
        for c in range(d // 16):
            b = q[r, 16 * c:16 * c + 16]
            if score_order:  # byte pairs 0, 1 of each 32-bit word at lo; pairs 2, 3 at hi
                lo = [b[4 * w + i] for w in range(4) for i in (0, 1)]
                hi = [b[4 * w + i] for w in range(4) for i in (2, 3)]
            else:
                lo, hi = list(b[:8]), list(b[8:])
            tile[swz(d, r, 16 * c):swz(d, r, 16 * c) + 8] = lo
            tile[swz(d, r, 16 * c + 8):swz(d, r, 16 * c + 8) + 8] = hi
    return tile


def ldmatrix_x4_b16(mem, row_addrs):
    """ldmatrix .x4 of 16-bit values: lane i gets, from matrix m, elements 2(i%4), 2(i%4)+1 of row i/4."""
    return [[v for m in range(4) for v in mem[row_addrs[8 * m + i // 4] + 2 * (i % 4):][:2]] for i in range(32)]


def fp8_decode_scores(q, k, d, kw0, nk, score_order=True):
    """warp_attend's fp8 scores of the decode warp whose keys start at kw0."""
    qmem, kmem = convert_query(q, d, score_order), store(k, d)
    got = np.zeros((16, nk))
    for kk in range(d // 32):
        a = [ldmatrix_x4_b16(qmem, [swz(d, lane & 15, (2 * kk + h) * 16 + (lane >> 4) * 8) for lane in range(32)])
             for h in range(2)]
        for nb in range(nk // 16):
            b = ldmatrix_x4(kmem, [fp8_swz(d, kw0 + nb * 16 + (lane >> 4) * 8 + (lane & 7),
                                           2 * kk + ((lane >> 3) & 1)) for lane in range(32)])
            for h in range(2):  # e4m3x2_to_half2 of bytes 0, 1 and (kHigh) 2, 3
                for n, reg in ((0, h), (8, 2 + h)):
                    got[:, 16 * nb + n:16 * nb + n + 8] += mma_m16n8k16(a[h], b[:, reg, 0:2], b[:, reg, 2:4])
    return got


@pytest.mark.parametrize("d", [64, 128, 256])
def test_fp8_decode_scores_are_q_k_transposed(d):
    rng = np.random.default_rng(d)
    q, k = rng.integers(-8, 8, (16, d)), rng.integers(-8, 8, (64, d))
    kw0, nk = 16, 16  # a decode warp's 16-key slice
    np.testing.assert_array_equal(fp8_decode_scores(q, k, d, kw0, nk), q @ k[kw0:kw0 + nk].T)
    # The query in dim order (as prefill tiles convert it) pairs the wrong dims with K's bytes.
    assert not np.array_equal(fp8_decode_scores(q, k, d, kw0, nk, score_order=False), q @ k[kw0:kw0 + nk].T)


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
