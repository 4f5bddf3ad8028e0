"""The fp8 decode tile's score fragments, emulated on the CPU: ldmatrix (.x4, .b16) from byte tiles
in the fp8_swz layout (tile_config.cuh) feeding mma.sync m16n8k32 e4m3 as warp_attend addresses
them (attention_tile.cuh), against Q K^T; and the layout's bank spread."""

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


@pytest.mark.parametrize("d", [64, 128, 256])
def test_fp8_swz_spreads_an_ldmatrix_over_all_banks(d):
    # The 8 rows of one 8x16-byte matrix at one chunk: 8 distinct 16-byte slots of 128 bytes.
    for row0 in range(0, 64, 8):
        for c in range(d // 16):
            assert len({fp8_swz(d, row0 + r, c) % 128 // 16 for r in range(8)}) == 8
