"""The POD backend inside vLLM's attention API on the GPU, in the style of vLLM's
tests/v1/attention/test_attention_backends.py: the same KV cache, block tables and queries go
through POD (our builder + impl) and through vLLM's FLASH_ATTN (its builder + impl).

- hybrid batches: POD runs the fused kernel and its output equals FLASH_ATTN's (bf16/fp16
  tolerance); the KV write goes through POD's do_kv_cache_update;
- pure-decode batches under a full CUDA graph: replaying the captured graph with new, padded
  batches equals eager execution;
- under cudagraph_mode FULL (full graphs of mixed batches): one graph, captured for a hybrid
  batch, replayed for hybrid, decode-only and prefill-only batches of the same padded size,
  equals FLASH_ATTN;
- sliding window, logits soft-cap and attention sinks, as the model families that use them pass
  them: hybrid and single-phase batches equal FLASH_ATTN's;
- an fp8 KV cache (vLLM's cache op writes it, the query is quantized as the layer does for FA3,
  descales per tensor and per KV head): POD equals the float32 reference on the dequantized
  values and FLASH_ATTN's fp8 path within that path's own rounding of probabilities to e4m3.

Every run draws fresh random lengths, block placements and values; outputs start as NaN.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from unittest import mock

import pytest
import torch
from vllm.config import (
    CacheConfig,
    CompilationConfig,
    CUDAGraphMode,
    ModelConfig,
    VllmConfig,
    set_current_vllm_config,
)
from vllm.v1.attention.backend import CommonAttentionMetadata
from vllm.v1.attention.backends.flash_attn import (
    FlashAttentionImpl,
    FlashAttentionMetadataBuilder,
)
from vllm.v1.kv_cache_interface import FullAttentionSpec, SlidingWindowSpec

from vllm_pod import backend as pod_backend
from vllm_pod.backend import POD_STATS, PodAttentionImpl, PodAttentionMetadataBuilder

pytestmark = pytest.mark.gpu

MAX_MODEL_LEN = 16384
TOL = {torch.bfloat16: dict(atol=2e-2, rtol=2e-2), torch.float16: dict(atol=4e-3, rtol=4e-3)}


class Layer:
    """The attributes vLLM's Attention layer hands to impls: unit KV scales (no fp8)."""

    def __init__(self):
        for name in ("_q_scale", "_k_scale", "_v_scale", "_prob_scale"):
            setattr(self, name, torch.ones((), dtype=torch.float32, device="cuda"))
        self._q_scale_float = self._k_scale_float = self._v_scale_float = 1.0


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    def make(num_q_heads, num_kv_heads, head_dim):
        path = tmp_path_factory.mktemp(f"llama-{num_q_heads}-{num_kv_heads}-{head_dim}")
        (path / "config.json").write_text(json.dumps({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": num_q_heads * head_dim, "intermediate_size": 1024,
            "num_attention_heads": num_q_heads, "num_key_value_heads": num_kv_heads,
            "head_dim": head_dim, "num_hidden_layers": 1, "vocab_size": 1000,
            "max_position_embeddings": MAX_MODEL_LEN, "rms_norm_eps": 1e-5}))
        return str(path)
    return make


@dataclass
class Setup:
    config: VllmConfig
    spec: FullAttentionSpec
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    block_size: int
    dtype: torch.dtype

    def builders(self):
        device = torch.device("cuda")
        return (PodAttentionMetadataBuilder(self.spec, ["pod"], self.config, device),
                FlashAttentionMetadataBuilder(self.spec, ["fa"], self.config, device))

    def impls(self):
        args = (self.num_q_heads, self.head_dim, self.head_dim ** -0.5, self.num_kv_heads,
                None, None, "auto")
        return PodAttentionImpl(*args), FlashAttentionImpl(*args)


def make_setup(model_dirs, num_q_heads, num_kv_heads, head_dim, block_size, dtype,
               compilation_config=None) -> Setup:
    config = VllmConfig(
        model_config=ModelConfig(model=model_dirs(num_q_heads, num_kv_heads, head_dim),
                                 skip_tokenizer_init=True, dtype=dtype,
                                 max_model_len=MAX_MODEL_LEN),
        cache_config=CacheConfig(block_size=block_size),
        compilation_config=compilation_config or CompilationConfig(),
    )
    spec = FullAttentionSpec(block_size=block_size, num_kv_heads=num_kv_heads,
                             head_size=head_dim, dtype=dtype)
    return Setup(config, spec, num_q_heads, num_kv_heads, head_dim, block_size, dtype)


def new_kv_cache(s: Setup, num_blocks: int) -> torch.Tensor:
    """The logical (blocks, kv heads, block size, 2*D) cache in vLLM's default NHD physical
    layout, K and V interleaved per head; filled with random context."""
    physical = torch.randn(num_blocks, s.block_size, s.num_kv_heads, 2 * s.head_dim,
                           dtype=s.dtype, device="cuda")
    return physical.permute(0, 2, 1, 3)


def block_tables(s: Setup, seq_lens, num_blocks, rows=None, width=None):
    """Distinct random blocks per request (padding rows point at block 0)."""
    need = [-(-n // s.block_size) for n in seq_lens]
    width = width or max(need + [1])
    perm = torch.randperm(num_blocks - 1, dtype=torch.int32) + 1
    table = torch.zeros(rows or len(seq_lens), width, dtype=torch.int32)
    used = 0
    for r, n in enumerate(need):
        table[r, :n] = perm[used:used + n]
        used += n
    assert used < num_blocks
    return table


def common_metadata(s: Setup, query_lens, seq_lens, table, num_tokens=None, buffers=None):
    """What a vLLM model runner hands to builders; `buffers` gives persistent device tensors
    (CUDA-graph replays must reuse the captured storage)."""
    qsl = torch.tensor([0] + list(query_lens), dtype=torch.int32).cumsum(0, dtype=torch.int32)
    seq = torch.tensor(seq_lens, dtype=torch.int32)
    num_reqs = len(query_lens)
    real_tokens = int(qsl[-1])
    slots = torch.tensor([
        int(table[r, p // s.block_size]) * s.block_size + p % s.block_size
        for r, (q, n) in enumerate(zip(query_lens, seq_lens)) for p in range(n - q, n)],
        dtype=torch.int64)
    if buffers is None:
        buffers = dict(qsl=qsl.cuda(), seq=seq.cuda(), table=table.cuda())
    else:
        buffers["qsl"].copy_(qsl)
        buffers["seq"].copy_(seq)
        buffers["table"].copy_(table)
    cm = CommonAttentionMetadata(
        query_start_loc=buffers["qsl"], query_start_loc_cpu=qsl, seq_lens=buffers["seq"],
        seq_lens_cpu_upper_bound=seq, num_reqs=num_reqs,
        num_actual_tokens=num_tokens or real_tokens, max_query_len=max(query_lens),
        max_seq_len=max(seq_lens), block_table_tensor=buffers["table"],
        slot_mapping=slots.cuda())
    return cm, buffers


def assert_equals_flash_attn(pod, fa, layer, query, kv_cache, pod_md, fa_md, dtype, describe,
                             key=None, value=None):
    """POD's impl and FLASH_ATTN's on the same inputs, outputs poisoned with NaN first."""
    out_pod = torch.full_like(query, float("nan"))
    pod.forward(layer, query, key, value, kv_cache, pod_md, out_pod)
    out_fa = torch.full_like(query, float("nan"))
    fa.forward(layer, query, key, value, kv_cache, fa_md, out_fa)
    torch.cuda.synchronize()
    assert not out_pod.isnan().any(), "POD left output rows unwritten"
    torch.testing.assert_close(out_pod, out_fa, **TOL[dtype], msg=lambda m: f"{describe}: {m}")


def random_hybrid_batch(rng: random.Random, block_size: int):
    """Decodes first, then chunked prefills (with and without prefixes); lengths at and around
    block boundaries included."""
    around = lambda k: max(1, k * block_size + rng.choice([-1, 0, 1]))
    decode_ctx = [rng.choice([1, rng.randint(2, 8192), around(rng.randint(1, 64))])
                  for _ in range(rng.randint(1, 48))]
    chunks = [rng.choice([2, rng.randint(2, 1024), around(rng.randint(1, 32))])
              for _ in range(rng.randint(1, 4))]
    prefixes = [rng.choice([0, rng.randint(1, 4096), around(rng.randint(1, 128))])
                for _ in chunks]
    return [1] * len(decode_ctx) + chunks, decode_ctx + [c + p for c, p in zip(chunks, prefixes)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("num_q_heads, num_kv_heads, head_dim, block_size", [
    (32, 8, 128, 16),   # Llama-3-8B per GPU
    (16, 8, 128, 16),   # Llama-3-8B at TP 2
    (8, 8, 64, 32),
    (16, 2, 256, 64),
    (32, 4, 128, 64),
    (32, 32, 96, 16),   # Phi-3-mini: head dim 96 runs on the 128 build
])
def test_hybrid_batches_match_flash_attn(model_dirs, dtype, num_q_heads, num_kv_heads, head_dim,
                                         block_size):
    s = make_setup(model_dirs, num_q_heads, num_kv_heads, head_dim, block_size, dtype)
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    layer = Layer()
    with set_current_vllm_config(s.config):
        pod_builder, fa_builder = s.builders()
        pod, fa = s.impls()
        for _ in range(4):
            query_lens, seq_lens = random_hybrid_batch(rng, block_size)
            num_blocks = sum(-(-n // block_size) for n in seq_lens) + 8
            kv_cache = new_kv_cache(s, num_blocks)
            table = block_tables(s, seq_lens, num_blocks)
            cm, _ = common_metadata(s, query_lens, seq_lens, table)
            n = cm.num_actual_tokens
            query = torch.randn(n, num_q_heads, head_dim, dtype=dtype, device="cuda")
            key = torch.randn(n, num_kv_heads, head_dim, dtype=dtype, device="cuda")
            value = torch.randn_like(key)

            pod_md = pod_builder.build(0, cm)
            assert pod_md.plan is not None, "a hybrid batch must take the fused path"
            pod.do_kv_cache_update(layer, key, value, kv_cache, cm.slot_mapping)
            fused_before = POD_STATS["fused_calls"]
            assert_equals_flash_attn(
                pod, fa, layer, query, kv_cache, pod_md, fa_builder.build(0, cm), dtype,
                f"seed {seed}, query_lens {query_lens}, seq_lens {seq_lens}", key, value)
            assert POD_STATS["fused_calls"] == fused_before + 1


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_full_graph_decode_replay_matches_eager(model_dirs, dtype):
    batch = 32  # captured (padded) batch size
    s = make_setup(model_dirs, 32, 8, 128, 16, dtype, CompilationConfig(
        cudagraph_mode="FULL_AND_PIECEWISE", cudagraph_capture_sizes=[batch]))
    assert s.config.compilation_config.cudagraph_mode.has_full_cudagraphs()
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    layer = Layer()
    width = MAX_MODEL_LEN // s.block_size
    num_blocks = batch * (width // 4 + 2) + 1
    kv_cache = new_kv_cache(s, num_blocks)
    with set_current_vllm_config(s.config):
        builder, _ = s.builders()
        pod, _ = s.impls()
        query = torch.randn(batch, 32, 128, dtype=dtype, device="cuda")
        out = torch.full_like(query, float("nan"))

        # Capture as vLLM does: every row a decode of length 1, longest context allowed.
        table = block_tables(s, [1] * batch, num_blocks, width=width)
        cm, buffers = common_metadata(s, [1] * batch, [1] * batch, table)
        cm.max_seq_len = MAX_MODEL_LEN
        md = builder.build_for_cudagraph_capture(cm)
        assert md.plan is None
        pod.forward(layer, query, None, None, kv_cache, md, out)  # warm-up outside the graph
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            pod.forward(layer, query, None, None, kv_cache, md, out)

        for real in (batch, rng.randint(1, batch - 1), rng.randint(1, batch - 1)):
            ctx = [rng.choice([1, rng.randint(2, MAX_MODEL_LEN // 4),
                               16 * rng.randint(1, 256) + rng.choice([-1, 0, 1])])
                   for _ in range(real)]
            # Padding rows: query length 0, seq_len 0, as vLLM pads a graph batch.
            query_lens, seq_lens = [1] * real + [0] * (batch - real), ctx + [0] * (batch - real)
            table = block_tables(s, seq_lens, num_blocks, width=width)
            cm, _ = common_metadata(s, query_lens, seq_lens, table, num_tokens=batch,
                                    buffers=buffers)
            replay_md = builder.build(0, cm)  # refills the persistent scheduling buffers
            assert replay_md.plan is None and replay_md.num_decodes == batch
            query.copy_(torch.randn_like(query))
            out.fill_(float("nan"))
            graph.replay()
            eager = torch.full_like(out, float("nan"))
            pod.forward(layer, query, None, None, kv_cache, builder.build(0, cm), eager)
            torch.cuda.synchronize()
            assert not out[:real].isnan().any()
            # Not bitwise: the captured launch keeps capture-time host arguments (max_seqlen_k).
            torch.testing.assert_close(
                out[:real], eager[:real], **TOL[dtype],
                msg=lambda m: f"seed {seed}, {real} real rows, seq_lens {ctx}: {m}")


def padded_batch(rng: random.Random, kind: str, num_reqs: int, num_tokens: int, block_size: int):
    """Query and sequence lengths of `kind` (hybrid, decodes, prefills) in num_reqs request slots
    and at most num_tokens tokens; unused slots are padding (query length 0, seq_len 0)."""
    decodes = {"hybrid": rng.randint(1, num_reqs - 2), "decodes": rng.randint(1, num_reqs),
               "prefills": 0}[kind]
    prefills = 0 if kind == "decodes" else rng.randint(1, min(3, num_reqs - decodes))
    budget = num_tokens - decodes
    chunks = [rng.randint(2, budget // prefills) for _ in range(prefills)]
    context = lambda: max(1, rng.choice([1, rng.randint(2, 4096),
                                         block_size * rng.randint(1, 64) + rng.choice([-1, 0, 1])]))
    seq_lens = ([context() for _ in range(decodes)]
                + [c + rng.choice([0, rng.randint(1, 2048)]) for c in chunks])
    query_lens = [1] * decodes + chunks
    pad = num_reqs - len(query_lens)
    return query_lens + [0] * pad, seq_lens + [0] * pad


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_full_graph_of_mixed_batches_replays_any_composition(model_dirs, dtype):
    num_reqs, num_tokens = 16, 512  # the captured (padded) batch
    s = make_setup(model_dirs, 32, 8, 128, 16, dtype, CompilationConfig(
        cudagraph_mode="FULL", cudagraph_capture_sizes=[num_tokens]))
    assert s.config.compilation_config.cudagraph_mode.mixed_mode() == CUDAGraphMode.FULL
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    layer = Layer()
    width = MAX_MODEL_LEN // s.block_size
    num_blocks = num_reqs * (6200 // s.block_size + 2) + 1
    kv_cache = new_kv_cache(s, num_blocks)
    with set_current_vllm_config(s.config):
        builder, fa_builder = s.builders()
        pod, fa = s.impls()
        query = torch.randn(num_tokens, 32, 128, dtype=dtype, device="cuda")
        key = torch.randn(num_tokens, 8, 128, dtype=dtype, device="cuda")  # not written: the
        value = torch.randn_like(key)                                       # cache is filled
        out = torch.full_like(query, float("nan"))

        query_lens, seq_lens = padded_batch(rng, "hybrid", num_reqs, num_tokens, s.block_size)
        table = block_tables(s, seq_lens, num_blocks, width=width)
        cm, buffers = common_metadata(s, query_lens, seq_lens, table, num_tokens=num_tokens)
        md = builder.build_for_cudagraph_capture(cm)
        assert md.plan is not None
        pod.forward(layer, query, key, value, kv_cache, md, out)  # warm-up outside the graph
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            pod.forward(layer, query, key, value, kv_cache, md, out)

        for kind in ("hybrid", "decodes", "prefills", "hybrid", "decodes", "prefills"):
            query_lens, seq_lens = padded_batch(rng, kind, num_reqs, num_tokens, s.block_size)
            table = block_tables(s, seq_lens, num_blocks, width=width)
            cm, _ = common_metadata(s, query_lens, seq_lens, table, num_tokens=num_tokens,
                                    buffers=buffers)
            replay_md = builder.build(0, cm)  # refills the plan's persistent buffers
            assert replay_md.plan is not None, "under FULL every batch must take the fused path"
            query.copy_(torch.randn_like(query))
            out.fill_(float("nan"))
            graph.replay()
            real = sum(query_lens)
            expected = torch.full_like(out, float("nan"))
            fa.forward(layer, query, key, value, kv_cache, fa_builder.build(0, cm), expected)
            torch.cuda.synchronize()
            assert not out[:real].isnan().any(), f"{kind}: the replay left rows unwritten"
            torch.testing.assert_close(
                out[:real], expected[:real], **TOL[dtype],
                msg=lambda m: f"seed {seed}, {kind}, lengths {query_lens} {seq_lens}: {m}")


# (query heads, KV heads, head dim, features, KV cache group): the shapes and features of the
# families that use them. A sliding-window group plans key ranges cut to the window; a
# full-attention group holding a window layer (vLLM's hybrid KV cache manager off) plans whole
# ranges and the kernel masks by the layer's window.
FAMILY_LAYERS = {
    "mistral_v01": (32, 8, 128, dict(sliding_window=1024), "window"),
    "gemma2_local": (16, 8, 256, dict(sliding_window=512, logits_soft_cap=3.0), "window"),
    "gemma2_global": (16, 8, 256, dict(logits_soft_cap=3.0), "full"),
    "gpt_oss_local": (64, 8, 64, dict(sliding_window=128, sinks=True), "window"),
    "gpt_oss_global": (64, 8, 64, dict(sinks=True), "full"),
    "window_in_full_group": (32, 8, 128, dict(sliding_window=700, sinks=True), "full"),
}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("family", FAMILY_LAYERS)
def test_features_match_flash_attn(model_dirs, monkeypatch, dtype, family):
    num_q_heads, num_kv_heads, head_dim, features, group = FAMILY_LAYERS[family]
    if features.get("sinks") and dtype == torch.float16:
        pytest.skip("sinks in float16 models are refused at backend selection")
    block_size = 16
    s = make_setup(model_dirs, num_q_heads, num_kv_heads, head_dim, block_size, dtype)
    window = features.get("sliding_window")
    spec_args = dict(block_size=block_size, num_kv_heads=num_kv_heads, head_size=head_dim,
                     dtype=dtype)
    s.spec = (SlidingWindowSpec(sliding_window=window, **spec_args) if group == "window"
              else FullAttentionSpec(sliding_window=window, **spec_args))
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    # One logit per query head, large enough to take a visible share of short rows; bf16, as
    # gpt-oss keeps them and as FLASH_ATTN's FA3 requires ("only bf16 dtype for S aux").
    sinks = ((torch.randn(num_q_heads, device="cuda") * 2 + 3).to(torch.bfloat16)
             if features.get("sinks") else None)
    layer = Layer()
    with set_current_vllm_config(s.config):
        pod_builder, fa_builder = s.builders()
        if group == "window":
            assert pod_builder.planner.sliding_window == window
            # What FLASH_ATTN's builder reads from the model's FLASH_ATTN layers.
            fa_builder.aot_sliding_window = (window - 1, 0)
        else:
            assert pod_builder.planner.sliding_window is None
            fa_builder.aot_schedule = False
        args = (num_q_heads, head_dim, head_dim ** -0.5, num_kv_heads, None, window, "auto",
                features.get("logits_soft_cap"))
        pod = PodAttentionImpl(*args, sinks=sinks)
        fa = FlashAttentionImpl(*args, sinks=sinks)
        # The model's layers, from which POD's builder sets FA3's ahead-of-time schedule.
        monkeypatch.setattr(pod_backend, "get_layers_from_vllm_config",
                            lambda *a: {"layer": mock.Mock(impl=pod)})
        for step in range(4):
            query_lens, seq_lens = random_hybrid_batch(rng, block_size)
            if step == 3:  # decodes alone: POD runs FLASH_ATTN's impl with the same features
                decodes = query_lens.count(1)
                query_lens, seq_lens = query_lens[:decodes], seq_lens[:decodes]
            num_blocks = sum(-(-n // block_size) for n in seq_lens) + 8
            kv_cache = new_kv_cache(s, num_blocks)
            table = block_tables(s, seq_lens, num_blocks)
            cm, _ = common_metadata(s, query_lens, seq_lens, table)
            n = cm.num_actual_tokens
            # Scores of std ~3, so that a soft-cap of 3 bends them.
            query = torch.randn(n, num_q_heads, head_dim, dtype=dtype, device="cuda") * 3
            pod_md = pod_builder.build(0, cm)
            assert (pod_md.plan is not None) == (step < 3)
            assert_equals_flash_attn(
                pod, fa, layer, query, kv_cache, pod_md, fa_builder.build(0, cm), dtype,
                f"seed {seed}, query_lens {query_lens}, seq_lens {seq_lens}")


@pytest.mark.parametrize("per_head", [False, True], ids=["per_tensor", "per_head"])
def test_fp8_kv_cache_matches_reference_and_flash_attn(model_dirs, per_head):
    # bf16 models only: FA3 writes fp8 attention's output in bf16 (selection refuses fp16).
    dtype = torch.bfloat16
    from vllm_pod.reference import broadcast_descale, reference_attention

    num_q_heads, num_kv_heads, head_dim, block_size = 32, 8, 128, 16
    s = make_setup(model_dirs, num_q_heads, num_kv_heads, head_dim, block_size, dtype)
    s.config.cache_config.cache_dtype = "fp8"
    s.spec = FullAttentionSpec(block_size=block_size, num_kv_heads=num_kv_heads, head_size=head_dim,
                               dtype=torch.uint8)  # vLLM's dtype for an fp8 cache
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    layer = Layer()
    shape = (num_kv_heads,) if per_head else ()
    for name in ("_q_scale", "_k_scale", "_v_scale"):  # scales that change the answer
        setattr(layer, name, torch.rand(shape, device="cuda") * 0.04 + 0.01)
    fp8 = torch.float8_e4m3fn
    with set_current_vllm_config(s.config):
        pod_builder, fa_builder = s.builders()
        args = (num_q_heads, head_dim, head_dim ** -0.5, num_kv_heads, None, None, "fp8")
        pod, fa = PodAttentionImpl(*args), FlashAttentionImpl(*args)
        assert pod.supports_quant_query_input, "the layer must quantize the query for POD too"
        for _ in range(3):
            query_lens, seq_lens = random_hybrid_batch(rng, block_size)
            num_blocks = sum(-(-n // block_size) for n in seq_lens) + 8
            # Earlier context: random e4m3 values (random bytes would hold NaNs).
            kv_cache = (torch.randn(num_blocks, block_size, num_kv_heads, 2 * head_dim, device="cuda")
                        .to(fp8).view(torch.uint8).permute(0, 2, 1, 3))
            table = block_tables(s, seq_lens, num_blocks)
            cm, _ = common_metadata(s, query_lens, seq_lens, table)
            n = cm.num_actual_tokens
            key = torch.randn(n, num_kv_heads, head_dim, dtype=dtype, device="cuda") * 0.2
            value = torch.randn_like(key) * 0.2
            # As the layer quantizes it (QuantFP8, static scale per tensor or per KV head group).
            query = torch.randn(n, num_q_heads, head_dim, device="cuda") * 0.2
            query = query / broadcast_descale(layer._q_scale, query, 1, num_kv_heads,
                                              num_q_heads // num_kv_heads)
            query = query.clamp(-448, 448).to(fp8)
            pod_md = pod_builder.build(0, cm)
            assert pod_md.plan is not None, "a hybrid batch must take the fused path"
            if not per_head:
                # vLLM's cache op quantizes with one scale per tensor; per-head scales come with
                # checkpoints, whose caches the random context above stands for.
                pod.do_kv_cache_update(layer, key, value, kv_cache, cm.slot_mapping)
            out_pod = torch.full((n, num_q_heads, head_dim), float("nan"), dtype=dtype, device="cuda")
            pod.forward(layer, query, None, None, kv_cache, pod_md, out_pod)
            out_fa = torch.full_like(out_pod, float("nan"))
            fa.forward(layer, query, None, None, kv_cache, fa_builder.build(0, cm), out_fa)
            torch.cuda.synchronize()
            describe = f"seed {seed}, query_lens {query_lens}, seq_lens {seq_lens}"
            assert not out_pod.isnan().any(), "POD left output rows unwritten"
            key_cache, value_cache = kv_cache.view(fp8).transpose(1, 2).split(head_dim, dim=-1)
            ref = reference_attention(query, key_cache, value_cache, cm.block_table_tensor,
                                      cm.query_start_loc, cm.seq_lens, head_dim ** -0.5,
                                      descales=(layer._q_scale, layer._k_scale, layer._v_scale))
            torch.testing.assert_close(out_pod.float(), ref, **TOL[dtype],
                                       msg=lambda m: f"{describe}, against the reference: {m}")
            # FA3 rounds probabilities to e4m3 (3 mantissa bits): its own error is that large.
            torch.testing.assert_close(out_pod, out_fa, atol=0.1, rtol=0.1,
                                       msg=lambda m: f"{describe}, against FLASH_ATTN: {m}")
