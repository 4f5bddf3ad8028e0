"""The float32 reference against a naive per-token, per-head loop in float64 (CPU), and the batch
helpers the GPU tests and benchmarks build on."""

import math

import pytest
import torch

from vllm_pod.reference import reference_attention
from vllm_pod.testing import KV_LAYOUTS, make_batch, quantize_fp8, sub_batch


def naive_attention(b, window=None, soft_cap=None, sinks=None):
    """One query token and one head at a time, straight from the block table."""
    out = torch.full(b.query.shape, float("nan"), dtype=torch.float64)
    hq, hkv = b.query.shape[1], b.key_cache.shape[2]
    bs = b.key_cache.shape[1]
    qsl = b.query_start_loc.tolist()
    for r, seq_len in enumerate(b.seq_lens.tolist()):
        q_len = qsl[r + 1] - qsl[r]
        for i in range(q_len):
            pos = seq_len - q_len + i
            for h in range(hq):
                kvh = h // (hq // hkv)
                q = b.query[qsl[r] + i, h].double()
                logits, values = [], []
                for j in range(pos + 1 - min(pos + 1, window or pos + 1), pos + 1):
                    blk = int(b.block_table[r, j // bs])
                    x = float(q @ b.key_cache[blk, j % bs, kvh].double()) * b.scale
                    logits.append(soft_cap * math.tanh(x / soft_cap) if soft_cap else x)
                    values.append(b.value_cache[blk, j % bs, kvh].double())
                sink = [] if sinks is None else [float(sinks[h])]
                m = max(logits + sink)
                w = torch.tensor([math.exp(x - m) for x in logits], dtype=torch.float64)
                denominator = w.sum() + sum(math.exp(x - m) for x in sink)
                out[qsl[r] + i, h] = (w[:, None] * torch.stack(values)).sum(0) / denominator
    return out


@pytest.mark.parametrize("layout", KV_LAYOUTS)
@pytest.mark.parametrize("seed", [0, 1])
def test_reference_matches_naive_loop(layout, seed):
    b = make_batch([1, 16, 17], [(5, 5), (3, 40), (1, 33), (0, 7)], num_q_heads=4, num_kv_heads=2,
                   head_dim=16, block_size=16, dtype=torch.float32, layout=layout, seed=seed)
    ref = reference_attention(b.query, b.key_cache, b.value_cache, b.block_table,
                              b.query_start_loc, b.seq_lens, b.scale)
    torch.testing.assert_close(ref.double(), naive_attention(b), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("window, soft_cap, with_sinks", [
    (1, None, False), (7, None, False), (20, 5.0, False), (None, 2.0, False), (None, None, True),
    (9, None, True), (30, 3.0, True)])
def test_reference_features_match_naive_loop(window, soft_cap, with_sinks):
    # Windows shorter than a block, than a prefill chunk, and longer than some sequences; caps
    # that bind (scores of std ~1 at scale 1/4 against caps of 2-5); sinks of either sign.
    b = make_batch([1, 16, 17], [(5, 5), (3, 40), (1, 33), (12, 30)], num_q_heads=4,
                   num_kv_heads=2, head_dim=16, block_size=16, dtype=torch.float32, seed=5)
    b.query *= 3
    sinks = torch.tensor([2.0, -1.0, 0.5, 4.0]) if with_sinks else None
    ref = reference_attention(b.query, b.key_cache, b.value_cache, b.block_table,
                              b.query_start_loc, b.seq_lens, b.scale, sliding_window=window,
                              logits_soft_cap=soft_cap, sinks=sinks)
    naive = naive_attention(b, window, soft_cap, sinks)
    torch.testing.assert_close(ref.double(), naive, atol=1e-5, rtol=1e-5)
    plain = reference_attention(b.query, b.key_cache, b.value_cache, b.block_table,
                                b.query_start_loc, b.seq_lens, b.scale)
    assert (ref - plain).abs().max() > 1e-3, "the feature changes the output"


@pytest.mark.parametrize("per_head", [False, True])
def test_reference_dequantizes_fp8_as_the_naive_loop_on_dequantized_values(per_head):
    b = make_batch([1, 16, 17], [(5, 5), (3, 40), (12, 30)], num_q_heads=4, num_kv_heads=2,
                   head_dim=16, block_size=16, dtype=torch.float32, seed=6)
    q8 = quantize_fp8(b, per_head=per_head, seed=6)
    group = 2
    q_d, k_d, v_d = (d.expand(2) for d in q8.descales)
    if per_head:
        assert not torch.equal(q_d[0], q_d[1]), "per-head descales differ"
    dequantized = make_batch([1, 16, 17], [(5, 5), (3, 40), (12, 30)], num_q_heads=4, num_kv_heads=2,
                             head_dim=16, block_size=16, dtype=torch.float32, seed=6)
    dequantized.query = q8.query.float() * q_d.repeat_interleave(group)[:, None]
    dequantized.key_cache = q8.key_cache.float() * k_d[:, None]
    dequantized.value_cache = q8.value_cache.float() * v_d[:, None]
    ref = reference_attention(q8.query, q8.key_cache, q8.value_cache, q8.block_table,
                              q8.query_start_loc, q8.seq_lens, q8.scale, descales=q8.descales)
    torch.testing.assert_close(ref.double(), naive_attention(dequantized), atol=1e-5, rtol=1e-5)
    # Quantized with descales near absmax / 448: within e4m3's rounding of the original.
    plain = reference_attention(b.query, b.key_cache, b.value_cache, b.block_table,
                                b.query_start_loc, b.seq_lens, b.scale)
    assert (ref - plain).abs().max() < 0.2


def test_reference_rejects_nothing_silently():
    # A request with no query tokens leaves no rows; every real row is finite.
    b = make_batch([3], [(0, 4)], num_q_heads=2, num_kv_heads=1, head_dim=8, block_size=16,
                   dtype=torch.float32)
    ref = reference_attention(b.query, b.key_cache, b.value_cache, b.block_table,
                              b.query_start_loc, b.seq_lens, b.scale)
    assert ref.shape == b.query.shape and torch.isfinite(ref).all()


@pytest.mark.parametrize("reqs", [slice(0, 3), slice(3, 5), slice(2, 4), slice(4, 5)],
                         ids=["decodes", "prefills", "one_of_each", "last_prefill"])
def test_sub_batch_is_those_requests_alone(reqs):
    # The kernel benchmark times POD on a batch's prefill and decodes alone through sub_batch: each part
    # must attend exactly as it did inside the whole batch.
    b = make_batch([1, 16, 17], [(5, 40), (3, 33)], num_q_heads=4, num_kv_heads=2, head_dim=16,
                   block_size=16, dtype=torch.float32, seed=3)
    part = sub_batch(b, reqs)
    assert part.num_decodes == len(range(3)[reqs])
    whole = reference_attention(b.query, b.key_cache, b.value_cache, b.block_table,
                                b.query_start_loc, b.seq_lens, b.scale)
    alone = reference_attention(part.query, part.key_cache, part.value_cache, part.block_table,
                                part.query_start_loc, part.seq_lens, part.scale)
    lo, hi = int(b.query_start_loc[reqs.start]), int(b.query_start_loc[reqs.stop])
    assert alone.shape == (hi - lo, 4, 16)
    torch.testing.assert_close(alone, whole[lo:hi], atol=0, rtol=0)
