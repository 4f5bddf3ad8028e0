"""The fused kernel on the GPU against the float32 reference: a configuration grid, a seeded fuzz
of random hybrid batches, CUDA-graph replay, and the op's input checks. Outputs are poisoned with
NaN before every call and every element of every real row is checked."""

import random

import pytest
import torch

from vllm_pod.plan import PodPlanner
from vllm_pod.reference import reference_attention
from vllm_pod.testing import (KV_LAYOUTS, batch_shape, device_planner, make_batch, plan_batch,
                              quantize_fp8)

pytestmark = pytest.mark.gpu

# By the output's dtype. An fp8 batch is compared with the reference on its dequantized values,
# which the kernel multiplies exactly (e4m3 values are fp16 values).
TOL = {torch.bfloat16: dict(atol=2e-2, rtol=2e-2, rel_norm=1e-2),
       torch.float16: dict(atol=4e-3, rtol=4e-3, rel_norm=2e-3)}
# "fp8": an e4m3 KV cache and query beside a bf16 or fp16 model, descales per tensor or per KV head.
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp8": "fp8"}


def make_test_batch(dtype, decodes, prefills, *, seed, features=None, **shape):
    """make_batch for one of DTYPES; features (with_features's) are applied before an fp8 batch is
    quantized. Returns the batch and the op's feature options."""
    model_dtype = [torch.bfloat16, torch.float16][seed % 2] if dtype == "fp8" else dtype
    b = make_batch(decodes, prefills, dtype=model_dtype, device="cuda", seed=seed, **shape)
    options = with_features(b, features or {}, seed)
    if dtype == "fp8":
        b = quantize_fp8(b, per_head=seed % 3 == 0, seed=seed)
    return b, options


def new_planner(b, max_num_tokens=16384, max_num_reqs=256, **options):
    return device_planner(**batch_shape(b), max_num_reqs=max_num_reqs, max_num_tokens=max_num_tokens,
                          **options)


def run_pod(b, planner=None, **features):
    """features: the op's options (logits_soft_cap, sliding_window, sinks)."""
    from vllm_pod.ops import pod_attention
    planner = planner or new_planner(b)
    plan = plan_batch(planner, b)
    out = b.out_like()
    pod_attention(out, b.query, b.key_cache, b.value_cache, b.block_table, plan, b.scale,
                  **b.fp8_options(), **features)
    torch.cuda.synchronize()
    assert int(planner.counters.abs().sum()) == 0, "the kernel must leave its counters zeroed"
    return out


def assert_matches_reference(b, out, **features):
    ref = reference_attention(b.query, b.key_cache, b.value_cache, b.block_table,
                              b.query_start_loc, b.seq_lens, b.scale, descales=b.descales, **features)
    n = int(b.query_start_loc[-1])
    out, ref = out[:n].float(), ref[:n]
    assert not out.isnan().any(), f"{int(out.isnan().sum())} output elements never written"
    tol = TOL[b.out_dtype or b.query.dtype]
    rel = float((out - ref).norm() / ref.norm())
    assert rel < tol["rel_norm"], f"relative error {rel:.2e}"
    torch.testing.assert_close(out, ref, atol=tol["atol"], rtol=tol["rtol"])


MIXES = {
    "hybrid": ([1, 15, 16, 17, 257, 1000], [(1, 1), (64, 64), (100, 612), (37, 2049)]),
    "decode_only": ([16, 33, 64, 4096], []),
    "prefill_only": ([], [(128, 128), (65, 300)]),
}
HEADS = [(8, 8), (12, 4), (16, 4), (16, 2), (32, 1)]  # GQA ratios 1, 3, 4, 8, 32 (MQA)


@pytest.mark.parametrize("mix", MIXES)
@pytest.mark.parametrize("block_size", [16, 32, 64])
@pytest.mark.parametrize("heads", HEADS, ids=lambda h: f"{h[0]}q{h[1]}kv")
@pytest.mark.parametrize("head_dim", [64, 96, 128, 256])
@pytest.mark.parametrize("dtype", DTYPES)
def test_grid(dtype, head_dim, heads, block_size, mix):
    decodes, prefills = MIXES[mix]
    seed = hash((dtype, head_dim, heads, block_size, mix)) % 10_000
    b, _ = make_test_batch(DTYPES[dtype], decodes, prefills, num_q_heads=heads[0], num_kv_heads=heads[1],
                           head_dim=head_dim, block_size=block_size,
                           layout=KV_LAYOUTS[seed % len(KV_LAYOUTS)], seed=seed)
    assert_matches_reference(b, run_pod(b))


# Each feature where it binds: windows shorter than a block, than a prefill tile, and longer than
# some sequences; a soft-cap of 3 on scores of std ~3 (queries scaled up 3x); sinks of std 3 around
# 4, large enough to take a visible share of short rows' and small of long rows' denominators.
FEATURES = {
    "window1": dict(sliding_window=1),
    "window37": dict(sliding_window=37),
    "window1000": dict(sliding_window=1000),
    "softcap": dict(logits_soft_cap=3.0),
    "sinks": dict(sinks=True),
    "window_sinks": dict(sliding_window=100, sinks=True),    # as gpt-oss's local layers
    "window_softcap": dict(sliding_window=300, logits_soft_cap=3.0),  # as Gemma 2's local layers
}


def with_features(b, features, seed):
    """The op's options for b: sinks=True becomes one random logit per query head (float32,
    bf16 or fp16, as models keep them); a soft-cap scales the queries so that it binds."""
    features = dict(features)
    if features.get("logits_soft_cap"):
        b.query.mul_(3)
    if features.pop("sinks", False):
        gen = torch.Generator(device="cuda").manual_seed(seed)
        sinks = torch.randn(b.query.shape[1], generator=gen, device="cuda") * 3 + 4
        features["sinks"] = sinks.to([torch.float32, torch.bfloat16, torch.float16][seed % 3])
    return features


@pytest.mark.parametrize("plan_window", [True, False], ids=["window_plan", "full_plan"])
@pytest.mark.parametrize("feature", FEATURES)
@pytest.mark.parametrize("mix", MIXES)
@pytest.mark.parametrize("head_dim", [64, 96, 128, 256])
@pytest.mark.parametrize("dtype", DTYPES)
def test_features(dtype, head_dim, mix, feature, plan_window):
    # plan_window: the planner cuts key ranges to the window (a sliding-window KV cache group),
    # or plans full ranges and the kernel masks alone (a window layer in a full-attention group).
    features = FEATURES[feature]
    if plan_window and "sliding_window" not in features:
        pytest.skip("no window to plan for")
    decodes, prefills = MIXES[mix]
    if set(features) == {"sliding_window"} and features["sliding_window"] >= max(
            decodes + [seq_len for _, seq_len in prefills]):
        pytest.skip("a window longer than every sequence changes nothing")
    seed = hash((dtype, head_dim, mix, feature)) % 10_000
    b, options = make_test_batch(DTYPES[dtype], decodes, prefills, num_q_heads=16, num_kv_heads=4,
                                 head_dim=head_dim, block_size=[16, 32, 64][seed % 3],
                                 layout=KV_LAYOUTS[seed % len(KV_LAYOUTS)], seed=seed, features=features)
    window = options.get("sliding_window") if plan_window else None
    out = run_pod(b, new_planner(b, sliding_window=window), **options)
    assert_matches_reference(b, out, **options)


def test_features_across_kv_splits():
    # Few long requests, so every one is cut into KV-splits: a row whose window lies wholly in
    # one split has empty parts in the others (weight 0 in the merge), and the sink joins the
    # merged denominator once.
    b = make_batch([9000, 20000], [(200, 15000)], num_q_heads=32, num_kv_heads=8, head_dim=128,
                   block_size=16, dtype=torch.bfloat16, device="cuda", seed=5)
    for features in (dict(sliding_window=700, sinks=True), dict(sinks=True),
                     dict(sliding_window=5000, logits_soft_cap=3.0)):
        options = with_features(b, features, seed=2)
        for window in (None, options.get("sliding_window")):
            planner = new_planner(b, sliding_window=window)
            assert plan_batch(planner, b).num_decode_items > 2 * 8, "decodes are split"
            assert_matches_reference(b, run_pod(b, planner, **options), **options)


def random_length(rng, block_size, hi):
    """Lengths at and around block boundaries, small, or anywhere up to hi."""
    kind = rng.random()
    if kind < 0.3:
        return max(1, min(hi, rng.randint(1, max(1, hi // block_size)) * block_size + rng.choice([-1, 0, 1])))
    if kind < 0.5:
        return rng.randint(1, 40)
    return rng.randint(1, hi)


def random_batch(rng, seed):
    block_size = rng.choice([16, 32, 64])
    heads = rng.choice([(32, 8), (28, 4), (8, 8), (16, 2), (8, 1)])
    long_ctx = rng.random() < 0.1
    decodes = [random_length(rng, block_size, 32768 if long_ctx else 4096)
               for _ in range(rng.choice([0, 1, 3, 16, 40]))]
    prefills = []
    for _ in range(rng.choice([0, 1, 2, 5]) if decodes else rng.randint(1, 4)):
        chunk = rng.choice([1, rng.randint(1, 64), random_length(rng, block_size, 512)])
        prefix = rng.choice([0, rng.randint(0, 64), random_length(rng, block_size, 32768 if long_ctx else 8192)])
        prefills.append((chunk, chunk + prefix))
    if not decodes and not prefills:
        decodes = [1]
    return make_batch(decodes, prefills, num_q_heads=heads[0], num_kv_heads=heads[1],
                      head_dim=128, block_size=block_size, dtype=torch.bfloat16, device="cuda",
                      layout=rng.choice(KV_LAYOUTS), seed=seed)


FUZZ_BATCHES = 500
FUZZ_WINDOWS = (1, 16, 100, 1000, 4096)


def random_features(rng):
    """A quarter of the fuzz batches attend plainly; the rest draw each feature by a coin."""
    if rng.random() < 0.25:
        return {}
    features = {}
    if rng.random() < 0.5:
        features["sliding_window"] = rng.choice(FUZZ_WINDOWS)
    if rng.random() < 0.3:
        features["logits_soft_cap"] = rng.choice([3.0, 30.0])
    if rng.random() < 0.4:
        features["sinks"] = True
    return features


def test_fuzz_hybrid_batches():
    rng = random.Random(20261127)
    planners = {}
    for i in range(FUZZ_BATCHES):
        b = random_batch(rng, seed=i)
        options = with_features(b, random_features(rng), seed=i)
        if rng.random() < 0.25:  # an fp8 KV cache
            b = quantize_fp8(b, per_head=rng.random() < 0.5, seed=i)
        # Half the windowed batches are planned for the window, half with full ranges.
        window = options.get("sliding_window") if rng.random() < 0.5 else None
        key = (b.query.shape[1], b.key_cache.shape[2], b.key_cache.shape[1], b.key_cache.dtype, window)
        # Planners are reused, as a backend reuses one.
        planners.setdefault(key, new_planner(b, sliding_window=window))
        try:
            assert_matches_reference(b, run_pod(b, planners[key], **options), **options)
        except AssertionError as e:
            lens = list(zip((b.query_start_loc[1:] - b.query_start_loc[:-1]).tolist(), b.seq_lens.tolist()))
            raise AssertionError(f"fuzz batch {i} (q_len, seq_len)={lens} block={key[2]} "
                                 f"{b.key_cache.dtype} {options} window plan {window}: {e}") from e


@pytest.mark.parametrize("factor", [4, 20])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_score_spikes_early_and_late(dtype, factor):
    # Keys scaled up 20x make scores ~30 log2 units above the rest: at position 3 a row's running
    # max is reached at once (later tiles leave it, and o, alone), and at 3/4 of each sequence it
    # jumps long after the start, so o must be rescaled after many tiles that did not move it.
    # Scaled 4x, rows' spikes fall on both sides of the softmax's rescale slack (a few log2 units
    # up to well past it): those within it are taken against the old max, as terms up to 2^8 in P,
    # which a slack beyond fp16's range would overflow.
    b = make_batch([40, 3000, 9000], [(300, 5000), (1, 7000), (128, 128)], num_q_heads=32,
                   num_kv_heads=8, head_dim=128, block_size=16, dtype=dtype, device="cuda", seed=11)
    bs = b.key_cache.shape[1]
    for r, seq_len in enumerate(b.seq_lens.tolist()):
        for pos in {3, 3 * seq_len // 4}:
            block = int(b.block_table[r, pos // bs])
            b.key_cache[block, pos % bs] *= factor
    assert_matches_reference(b, run_pod(b))


def test_repeated_launches_are_bitwise_identical():
    # Scheduling is dynamic, but each row's arithmetic is not: a difference would mean a race.
    b = make_batch([3000, 17, 9000], [(200, 700), (1, 5000)], num_q_heads=32, num_kv_heads=8,
                   head_dim=128, block_size=16, dtype=torch.bfloat16, device="cuda", seed=7)
    planner = new_planner(b)
    first = run_pod(b, planner)
    for _ in range(5):
        assert torch.equal(run_pod(b, planner), first)


def test_cuda_graph_replay_matches_eager_and_follows_new_plans():
    from vllm_pod.ops import pod_attention
    shape = dict(num_q_heads=32, num_kv_heads=8, head_dim=128, block_size=16, dtype=torch.bfloat16,
                 device="cuda")
    a = make_batch([100, 2000, 33], [(64, 300)], seed=1, **shape)
    planner = new_planner(a)
    eager = run_pod(a, planner)
    out = torch.full_like(a.query, float("nan"))
    plan = planner.plan(a.query_start_loc.cpu(), a.seq_lens.cpu())
    pod_attention(out, a.query, a.key_cache, a.value_cache, a.block_table, plan, a.scale)  # warm-up
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        pod_attention(out, a.query, a.key_cache, a.value_cache, a.block_table, plan, a.scale)
    out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, eager)

    # The same graph, new lengths and queries (as a decode step after another): only the plan
    # buffer and the query change in place; the caches and block table already cover the lengths.
    a.seq_lens = torch.tensor([90, 1500, 20, 250], dtype=torch.int32, device="cuda")
    a.query.copy_(torch.randn_like(a.query))
    planner.plan(a.query_start_loc.cpu(), a.seq_lens.cpu())
    out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    assert_matches_reference(a, out)


@pytest.mark.parametrize("bad, match", [
    (dict(head_dim=80), "head dim"),
    (dict(dtype=torch.float32), "dtype"),
    (dict(block_size=8), "block size"),
])
def test_unsupported_inputs_raise_clear_errors(bad, match):
    from vllm_pod.ops import pod_attention
    cfg = dict(num_q_heads=8, num_kv_heads=2, head_dim=128, block_size=16, dtype=torch.bfloat16,
               device="cuda") | bad
    b = make_batch([20], [(4, 10)], **cfg)
    planner = PodPlanner(num_q_heads=8, num_kv_heads=2, head_dim=cfg["head_dim"], block_size=cfg["block_size"],
                         num_sms=132, ctas_per_sm=2, max_num_reqs=8, max_num_tokens=64, device="cuda")
    plan = planner.plan(b.query_start_loc.cpu(), b.seq_lens.cpu())
    with pytest.raises(RuntimeError, match=match):
        pod_attention(torch.empty_like(b.query), b.query, b.key_cache, b.value_cache, b.block_table,
                      plan, b.scale)


def test_bad_feature_options_raise_clear_errors():
    from vllm_pod.ops import pod_attention
    b = make_batch([20], [(4, 10)], num_q_heads=8, num_kv_heads=2, head_dim=128, block_size=16,
                   dtype=torch.bfloat16, device="cuda")
    out = torch.empty_like(b.query)
    args = (out, b.query, b.key_cache, b.value_cache, b.block_table)
    plan = plan_batch(new_planner(b), b)
    with pytest.raises(RuntimeError, match="one contiguous logit per query head"):
        pod_attention(*args, plan, b.scale, sinks=torch.zeros(4, device="cuda"))
    with pytest.raises(RuntimeError, match="sinks must be float32, bfloat16 or float16"):
        pod_attention(*args, plan, b.scale, sinks=torch.zeros(8, dtype=torch.int32, device="cuda"))
    with pytest.raises(RuntimeError, match="logits_soft_cap must be positive"):
        pod_attention(*args, plan, b.scale, logits_soft_cap=-1.0)
    # A plan cut to one window holds no keys outside it: refused for another window, or none.
    window_plan = plan_batch(new_planner(b, sliding_window=8), b)
    for other in (None, 16):
        with pytest.raises(ValueError, match="made for sliding window 8"):
            pod_attention(*args, window_plan, b.scale, sliding_window=other)


def test_bad_fp8_inputs_raise_clear_errors():
    from vllm_pod.ops import pod_attention
    b16 = make_batch([20], [(4, 10)], num_q_heads=8, num_kv_heads=2, head_dim=128, block_size=16,
                     dtype=torch.bfloat16, device="cuda")
    b = quantize_fp8(b16, per_head=False)
    plan = plan_batch(new_planner(b), b)
    q_d, k_d, v_d = b.descales
    cases = [
        # A 16-bit query beside an fp8 cache (FLASH_ATTN's layers quantize it).
        ((b.out_like(), b16.query, b.key_cache, b.value_cache), b.fp8_options(), "share one dtype"),
        ((b.out_like(), b.query, b.key_cache, b.value_cache), {}, "needs q/k/v descales"),
        ((b.out_like(), b.query, b.key_cache, b.value_cache),
         dict(q_descale=q_d, k_descale=torch.ones(3, device="cuda"), v_descale=v_d), "one per KV head"),
        ((b.out_like(), b.query, b.key_cache, b.value_cache),
         dict(q_descale=torch.ones(2, device="cuda"), k_descale=k_d, v_descale=v_d), "all be per tensor or all per KV head"),
        ((torch.empty(b.query.shape, dtype=torch.float32, device="cuda"), b.query, b.key_cache,
          b.value_cache), b.fp8_options(), "float16/bfloat16 beside an fp8 query"),
        ((b16.out_like(), b16.query, b16.key_cache, b16.value_cache), b.fp8_options(), "for an fp8 KV cache only"),
    ]
    for args, descales, match in cases:
        with pytest.raises(RuntimeError, match=match):
            pod_attention(*args, b.block_table, plan, b.scale, **descales)


def test_kv_cache_strides_beyond_32_bit_offsets_raise():
    # The K/V loader offsets within a block in 32 bits; a cache whose block stride reaches 2^31
    # elements (two blocks 4 GiB apart here) must be refused, not wrap around.
    from vllm_pod.ops import pod_attention
    b = make_batch([16], [], num_q_heads=2, num_kv_heads=1, head_dim=128, block_size=16,
                   dtype=torch.bfloat16, device="cuda")
    cache = torch.empty_strided((2, 16, 1, 128), (1 << 31, 128, 128, 1), dtype=torch.bfloat16, device="cuda")
    plan = plan_batch(new_planner(b), b)
    with pytest.raises(RuntimeError, match="too large for 32-bit offsets"):
        pod_attention(torch.empty_like(b.query), b.query, cache, cache, torch.zeros_like(b.block_table), plan,
                      b.scale)
    del cache


def test_plans_must_fit_the_kernels_prefill_tile():
    from vllm_pod.ops import device_prefill_tile_rows
    b = make_batch([300], [(200, 700)], num_q_heads=8, num_kv_heads=2, head_dim=128, block_size=16,
                   dtype=torch.bfloat16, device="cuda", seed=7)
    rows = device_prefill_tile_rows(b.query.dtype, 128)
    # Taller items than the kernel's tile would lose rows: refused.
    with pytest.raises(RuntimeError, match="prefill_rows=vllm_pod.ops.device_prefill_tile_rows"):
        run_pod(b, new_planner(b, prefill_rows=2 * rows))
    # Shorter ones only leave part of the tile idle: still exact.
    assert_matches_reference(b, run_pod(b, new_planner(b, prefill_rows=rows // 2)))
