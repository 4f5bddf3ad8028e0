"""The vLLM glue of the POD backend, on a CPU: registration, selection, configuration checks,
the metadata builder's output for a spectrum of batches, and the impl's dispatch.

Runs against any supported vLLM (0.26, 0.33). No GPU: the kernel and FA3 are replaced by
recorders where a call would reach them; everything else is vLLM's own code.
"""

from __future__ import annotations

import json
import random
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from unittest import mock

import pytest
import torch
import vllm.envs as envs
from vllm.config import (
    AttentionConfig,
    CacheConfig,
    CompilationConfig,
    CUDAGraphMode,
    DeviceConfig,
    ModelConfig,
    ParallelConfig,
    VllmConfig,
    set_current_vllm_config,
)
from vllm.platforms.interface import DeviceCapability
from vllm.v1.attention.backend import AttentionCGSupport, CommonAttentionMetadata
from vllm.v1.attention.backends.registry import AttentionBackendEnum
from vllm.v1.attention.backends.utils import split_decodes_and_prefills
from vllm.v1.kv_cache_interface import FullAttentionSpec, SlidingWindowSpec

import vllm_pod
from vllm_pod import backend as pod_backend
from vllm_pod.backend import (
    POD_STATS,
    PodAttentionBackend,
    PodAttentionImpl,
    PodAttentionMetadataBuilder,
)
from vllm_pod.plan import ITEM_FIELDS

ENV = vllm_pod.ENV_VAR
NUM_Q_HEADS, NUM_KV_HEADS, HEAD_DIM = 8, 2, 128
F = {name: i for i, name in enumerate(ITEM_FIELDS)}


@pytest.fixture(scope="module", autouse=True)
def registered():
    vllm_pod.register()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A local Llama-shaped config (8 q heads, 2 KV heads, head dim 128): no hub access."""
    path = tmp_path_factory.mktemp("tiny-llama")
    (path / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 1024,
        "intermediate_size": 2048, "num_attention_heads": NUM_Q_HEADS,
        "num_key_value_heads": NUM_KV_HEADS, "head_dim": HEAD_DIM, "num_hidden_layers": 2,
        "vocab_size": 1000, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
        "torch_dtype": "bfloat16"}))
    return str(path)


def model_variant(model_dir, name, **overrides) -> str:
    """The tiny model's config with some fields changed, as a model directory of its own."""
    config = json.loads(open(f"{model_dir}/config.json").read())
    path = Path(model_dir).parent / name
    path.mkdir(exist_ok=True)
    (path / "config.json").write_text(json.dumps(config | overrides))
    return str(path)


def make_config(model_dir, *, tensor_parallel_size=1, compilation_config=None,
                **attention) -> VllmConfig:
    return VllmConfig(
        model_config=ModelConfig(model=model_dir, skip_tokenizer_init=True, dtype="bfloat16",
                                 max_model_len=4096),
        device_config=DeviceConfig(device="cpu"),
        cache_config=CacheConfig(block_size=16),
        parallel_config=ParallelConfig(tensor_parallel_size=tensor_parallel_size),
        attention_config=AttentionConfig(**attention),
        compilation_config=compilation_config or CompilationConfig(),
    )


# -- registration ------------------------------------------------------------------------------

def _installed() -> bool:
    try:
        distribution("vllm-pod")
    except PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _installed(), reason="vllm-pod is not pip-installed here")
def test_entry_point_discovered_and_registers():
    from vllm.plugins import DEFAULT_PLUGINS_GROUP, load_plugins_by_group

    plugins = load_plugins_by_group(DEFAULT_PLUGINS_GROUP)
    assert plugins["pod"] is vllm_pod.register
    plugins["pod"]()
    assert AttentionBackendEnum.CUSTOM.get_class() is PodAttentionBackend


def test_register_is_idempotent_and_names_agree():
    vllm_pod.register()
    vllm_pod.register()
    assert AttentionBackendEnum.CUSTOM.get_class() is PodAttentionBackend
    if hasattr(AttentionBackendEnum, "register"):  # vLLM that can add names (0.33)
        assert AttentionBackendEnum["POD"].get_class() is PodAttentionBackend
        assert PodAttentionBackend.get_name() == "POD"
    else:
        assert "POD" not in AttentionBackendEnum.__members__
        assert PodAttentionBackend.get_name() == "CUSTOM"
    # vLLM looks the backend up by its name.
    assert AttentionBackendEnum[PodAttentionBackend.get_name()].get_class() is PodAttentionBackend


def test_env_var_declared_to_vllm(monkeypatch):
    monkeypatch.setenv(ENV, "POD")
    assert ENV in envs.environment_variables  # no "unknown environment variable" warning
    assert envs.compile_factors()[ENV] == "POD"  # part of the compile-cache key
    monkeypatch.setenv(ENV, "")
    assert envs.compile_factors()[ENV] != "POD"


# -- selection ---------------------------------------------------------------------------------

def test_env_var_selects_pod(monkeypatch, model_dir):
    monkeypatch.setenv(ENV, "POD")
    config = make_config(model_dir)
    assert config.attention_config.backend is AttentionBackendEnum.CUSTOM
    assert config.attention_config.backend.get_class() is PodAttentionBackend


def test_no_env_var_leaves_auto(monkeypatch, model_dir):
    monkeypatch.delenv(ENV, raising=False)
    assert make_config(model_dir).attention_config.backend is None


@pytest.mark.parametrize("explicit", ["FLASH_ATTN", "FLASHINFER", "TRITON_ATTN"])
def test_explicit_backend_wins_over_env_var(monkeypatch, model_dir, explicit):
    monkeypatch.setenv(ENV, "POD")
    config = make_config(model_dir, backend=explicit)
    assert config.attention_config.backend is AttentionBackendEnum[explicit]
    assert not AttentionBackendEnum[explicit].is_overridden()  # built-ins stay vLLM's


def test_explicit_names_select_pod(monkeypatch, model_dir):
    monkeypatch.delenv(ENV, raising=False)
    names = ["CUSTOM"] + (["POD"] if "POD" in AttentionBackendEnum.__members__ else [])
    for name in names:
        backend = make_config(model_dir, backend=name).attention_config.backend
        # A run-time added name would not unpickle in a spawned worker; CUSTOM always does.
        assert backend is AttentionBackendEnum.CUSTOM
        assert backend.get_class() is PodAttentionBackend


class _SelectingPlatform:
    """The explicit-backend branch of vLLM's CUDA platform, which cannot load without a GPU."""

    def get_attn_backend_cls(self, selected_backend, attn_selector_config, num_heads=None):
        assert selected_backend is not None, "the selector saw no backend choice"
        reasons = selected_backend.get_class().validate_configuration(
            device_capability=DeviceCapability(9, 0), **attn_selector_config._asdict())
        if reasons:
            raise ValueError(f"Selected backend {selected_backend} is not valid: {reasons}")
        return selected_backend.get_path()


@pytest.fixture
def extension_loads(monkeypatch):
    """The compiled extension is absent on a CPU checkout; selection only asks whether it loads."""
    monkeypatch.setattr(pod_backend, "extension_load_error", lambda: None)


@pytest.mark.parametrize("via", ["env", "explicit"])
def test_selector_resolves_to_pod(monkeypatch, model_dir, extension_loads, via):
    import vllm.platforms
    from vllm.v1.attention import selector

    if via == "env":
        monkeypatch.setenv(ENV, "POD")
        config = make_config(model_dir)
    else:
        monkeypatch.delenv(ENV, raising=False)
        config = make_config(model_dir, backend="CUSTOM")
    monkeypatch.setattr(vllm.platforms, "_current_platform", _SelectingPlatform())
    selector._cached_get_attn_backend.cache_clear()
    try:
        with set_current_vllm_config(config):
            cls = selector.get_attn_backend(HEAD_DIM, torch.bfloat16, "auto")
            assert cls is PodAttentionBackend
            with pytest.raises(ValueError, match="head_size not supported"):
                selector.get_attn_backend(80, torch.bfloat16, "auto")
    finally:
        selector._cached_get_attn_backend.cache_clear()


# -- configuration checks ----------------------------------------------------------------------

def _validate(**overrides) -> list[str]:
    kwargs = dict(head_size=128, dtype=torch.bfloat16, kv_cache_dtype="auto", block_size=16,
                  use_mla=False, has_sink=False, use_sparse=False, use_mm_prefix=False,
                  use_per_head_quant_scales=False, device_capability=DeviceCapability(9, 0),
                  attn_type="decoder")
    kwargs.update(overrides)
    return PodAttentionBackend.validate_configuration(**kwargs)


@pytest.mark.usefixtures("extension_loads")
@pytest.mark.parametrize("overrides", [
    {}, {"dtype": torch.float16}, {"head_size": 64}, {"head_size": 96}, {"head_size": 256},
    {"block_size": 32},
    {"block_size": 64}, {"block_size": None}, {"kv_cache_dtype": "bfloat16"},
    {"kv_cache_dtype": None}, {"device_capability": DeviceCapability(8, 0)},
    {"device_capability": DeviceCapability(8, 9)}, {"has_sink": True},
    {"has_sliding_window": True}, {"has_sliding_window": True, "head_size": 256},
    {"has_sliding_window": True, "device_capability": DeviceCapability(8, 0)},
    {"kv_cache_dtype": "fp8"}, {"kv_cache_dtype": "fp8_e4m3"},
    {"kv_cache_dtype": "fp8", "has_sink": True, "has_sliding_window": True, "head_size": 64},
])
def test_validate_accepts_supported(overrides):
    assert _validate(**overrides) == []


@pytest.mark.parametrize("overrides, reason", [
    ({"head_size": 80}, "head_size not supported"),
    ({"head_size": 512}, "head_size not supported"),
    ({"dtype": torch.float32}, "dtype not supported"),
    ({"kv_cache_dtype": "fp8_e5m2"},
     "POD attention supports KV cache dtypes auto/float16/bfloat16/fp8/fp8_e4m3, not fp8_e5m2"),
    ({"kv_cache_dtype": "fp8", "dtype": torch.float16},
     "POD attention supports an fp8 KV cache in bfloat16 models only (FLASH_ATTN's FA3, which "
     "runs single-phase batches, writes its fp8 output in bf16)"),
    ({"kv_cache_dtype": "fp8", "device_capability": DeviceCapability(8, 0)},
     "POD attention supports an fp8 KV cache on compute capability 9.0 (H100/H200) only, as "
     "FLASH_ATTN's FA3 does"),
    ({"block_size": 8}, "block_size not supported"),
    ({"block_size": 24}, "block_size not supported"),
    ({"use_mla": True}, "MLA not supported"),
    ({"has_sink": True, "device_capability": DeviceCapability(8, 0)},
     "POD attention supports attention sinks on compute capability 9.0 (H100/H200) only"),
    ({"has_sink": True, "dtype": torch.float16},
     "POD attention supports attention sinks in bfloat16 models only (FLASH_ATTN's FA3, which runs "
     "single-phase batches, takes bf16 sinks)"),
    ({"use_non_causal": True}, "non-causal attention not supported"),
    ({"attn_type": "encoder_only"}, "attention type encoder_only not supported"),
    ({"attn_type": "encoder_decoder"}, "attention type encoder_decoder not supported"),
    ({"attn_type": "encoder"}, "attention type encoder not supported"),
])
def test_validate_refuses_with_reason(overrides, reason):
    assert reason in _validate(**overrides)


def select(config):
    """vLLM's selector (through the explicit-backend branch of its CUDA platform) in `config`."""
    import vllm.platforms
    from vllm.v1.attention import selector

    selector._cached_get_attn_backend.cache_clear()
    try:
        with (set_current_vllm_config(config),
              mock.patch.object(vllm.platforms, "_current_platform", _SelectingPlatform())):
            return selector.get_attn_backend(HEAD_DIM, torch.bfloat16, "auto")
    finally:
        selector._cached_get_attn_backend.cache_clear()


@pytest.mark.usefixtures("extension_loads")
@pytest.mark.parametrize("capability", [DeviceCapability(7, 5), DeviceCapability(10, 0),
                                        DeviceCapability(12, 0)])
def test_unsupported_gpu_named_with_what_pod_supports(capability):
    reasons = _validate(device_capability=capability)
    assert reasons == [f"POD attention runs on compute capability 8.x (A100) and 9.0 (H100/H200), "
                       f"not {capability.major}.{capability.minor}"]


def test_selection_refuses_without_the_extension(monkeypatch, model_dir):
    from vllm_pod import ops

    # What a source install without nvcc leaves: no vllm_pod._C to import.
    monkeypatch.setitem(sys.modules, "vllm_pod._C", None)
    ops._load_extension.cache_clear()
    try:
        with pytest.raises(ValueError) as refused:
            select(make_config(model_dir, backend="CUSTOM"))
    finally:
        ops._load_extension.cache_clear()
    message = str(refused.value)
    assert "vllm_pod._C does not load (ModuleNotFoundError" in message
    assert "`CUDA_HOME=/usr/local/cuda pip install --no-build-isolation -e .`" in message


def _with_speculative_decoding(config, method="ngram", async_scheduling=False):
    """config with speculative decoding set after it was built, as vLLM resolves it: n-gram
    speculation turns asynchronous scheduling off; a drafting model's may keep it on."""
    from vllm.config import ParallelConfig, SpeculativeConfig

    config.speculative_config = SpeculativeConfig(
        method="ngram", num_speculative_tokens=2, prompt_lookup_min=1, prompt_lookup_max=3,
        target_model_config=config.model_config, target_parallel_config=ParallelConfig())
    config.speculative_config.method = method  # a drafting model's config needs its checkpoint
    config.scheduler_config.async_scheduling = async_scheduling
    return config


def _with_dual_batch_overlap(config):
    # Set after the config is built: vLLM only allows micro-batching for expert-parallel MoE
    # models (with a DeepEP-style all2all backend), which the tiny dense model is not.
    config.parallel_config.enable_dbo = True
    return config


def _chunked_local(model_dir):
    """The same model with Llama 4's chunked local attention."""
    return make_config(model_variant(model_dir, "tiny-llama-chunked-local",
                                     attention_chunk_size=1024), backend="CUSTOM")


@pytest.mark.usefixtures("extension_loads")
@pytest.mark.parametrize("config_with, reason", [
    (lambda d: _with_speculative_decoding(make_config(d, backend="CUSTOM"), "eagle3"),
     "POD attention supports n-gram speculative decoding only, not eagle3"),
    (lambda d: _with_speculative_decoding(make_config(d, backend="CUSTOM"), "ngram", True),
     "asynchronous scheduling with speculative decoding only estimates: serve with "
     "--no-async-scheduling"),
    (lambda d: _with_dual_batch_overlap(make_config(d, backend="CUSTOM")),
     "POD attention does not support dual-batch overlap or micro-batching"),
    (_chunked_local,
     "POD attention does not support chunked local attention (attention_chunk_size=1024"),
], ids=["drafting-model", "async-speculative-decoding", "dual-batch-overlap",
        "chunked-local-attention"])
def test_selection_refuses_unsupported_features(model_dir, config_with, reason):
    assert select(make_config(model_dir, backend="CUSTOM")) is PodAttentionBackend
    with pytest.raises(ValueError, match=r"Selected backend .* is not valid") as refused:
        select(config_with(model_dir))
    assert reason in str(refused.value)


def test_selection_logs_that_pod_serves(monkeypatch, model_dir, extension_loads):
    lines = []
    monkeypatch.setattr(pod_backend.logger, "info_once",
                        lambda msg, *args, **kw: lines.append(msg % args))
    select(make_config(model_dir, backend="CUSTOM"))
    assert lines == ["Using POD attention (vllm-pod): hybrid prefill+decode batches run its "
                     "fused kernel, the others FLASH_ATTN's kernels"]
    lines.clear()
    config = make_config(model_dir, backend="CUSTOM")
    config.compilation_config.cudagraph_mode = CUDAGraphMode.FULL  # as a GPU config keeps it
    select(config)
    assert lines == ["Using POD attention (vllm-pod): every batch runs its fused kernel (full "
                     "CUDA graphs of mixed batches)"]
    lines.clear()
    with pytest.raises(ValueError):
        select(_with_speculative_decoding(make_config(model_dir, backend="CUSTOM"), "eagle3"))
    assert lines == []  # a refused selection does not claim POD


@pytest.mark.usefixtures("extension_loads")
def test_selection_accepts_ngram_speculation(monkeypatch, model_dir):
    config = _with_speculative_decoding(make_config(model_dir, backend="CUSTOM"))
    assert select(config) is PodAttentionBackend
    # Verify steps stay behind the one-token decodes (test_builder_batches plans them).
    with set_current_vllm_config(config):
        assert make_builder(monkeypatch, config).reorder_batch_threshold == 1


# -- metadata builder --------------------------------------------------------------------------

BLOCK = 16
NUM_SMS, CTAS_PER_SM = 8, 2


def make_builder(monkeypatch, config, spec_cls=FullAttentionSpec,
                 **spec_args) -> PodAttentionMetadataBuilder:
    """The POD builder of one attention layer of `config`'s model, as a model runner makes it
    (call it in set_current_vllm_config(config)). The layer's KV cache spec holds this rank's KV
    heads: with tensor parallelism each rank's attention layers keep their share of them."""
    monkeypatch.setattr(pod_backend, "_device_occupancy", lambda *a: (NUM_SMS, CTAS_PER_SM))
    monkeypatch.setattr(pod_backend, "device_prefill_tile_rows", lambda *a: 128)
    spec = spec_cls(block_size=BLOCK,
                    num_kv_heads=config.model_config.get_num_kv_heads(config.parallel_config),
                    head_size=HEAD_DIM, dtype=torch.bfloat16, **spec_args)
    return PodAttentionMetadataBuilder(spec, ["layer.0"], config, torch.device("cpu"))


@pytest.fixture
def builder(monkeypatch, model_dir):
    config = make_config(model_dir)
    with set_current_vllm_config(config):
        yield make_builder(monkeypatch, config)


def batch(query_lens, seq_lens, num_tokens=None) -> CommonAttentionMetadata:
    """vLLM's per-step metadata as a model runner fills it. Device-side tensors live on the
    "meta" device: reading their values (a GPU->CPU sync on a GPU) raises."""
    qsl = torch.tensor([0] + query_lens, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    seq = torch.tensor(seq_lens, dtype=torch.int32)
    num_reqs = len(query_lens)
    max_blocks = max(1, -(-max(seq_lens) // BLOCK))
    num_tokens = int(qsl[-1]) if num_tokens is None else num_tokens
    meta = torch.device("meta")
    return CommonAttentionMetadata(
        query_start_loc=qsl.to(meta), query_start_loc_cpu=qsl, seq_lens=seq.to(meta),
        seq_lens_cpu_upper_bound=seq, num_reqs=num_reqs, num_actual_tokens=num_tokens,
        max_query_len=max(query_lens), max_seq_len=max(seq_lens),
        block_table_tensor=torch.empty(num_reqs, max_blocks, dtype=torch.int32, device=meta),
        slot_mapping=torch.empty(int(qsl[-1]), dtype=torch.int64, device=meta),
    )


def test_builder_contract(builder):
    assert builder.reorder_batch_threshold == 1
    assert (PodAttentionMetadataBuilder.get_cudagraph_support(builder.vllm_config,
                                                               builder.kv_cache_spec)
            == AttentionCGSupport.ALWAYS)
    planner = builder.planner
    assert (planner.group, planner.num_kv_heads, planner.head_dim, planner.block_size) == (
        NUM_Q_HEADS // NUM_KV_HEADS, NUM_KV_HEADS, HEAD_DIM, BLOCK)
    assert (planner.num_sms, planner.ctas_per_sm) == (NUM_SMS, CTAS_PER_SM)


def check_coverage(plan, query_lens, seq_lens, num_q_heads=NUM_Q_HEADS, num_kv_heads=NUM_KV_HEADS):
    """Every (query token, query head) of every request is covered by work items whose key
    ranges are disjoint and together span [0, E) with position < E <= seq_len; padding rows
    (query length 0) get no work."""
    group = num_q_heads // num_kv_heads
    starts = [sum(query_lens[:r]) for r in range(len(query_lens))]
    spans: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for it in plan.items:
        r = int(it[F["req"]])
        q0, n = int(it[F["q_start"]]), int(it[F["n_tok"]])
        assert query_lens[r] > 0
        assert starts[r] <= q0 and q0 + n <= starts[r] + query_lens[r]
        for t in range(q0, q0 + n):
            for h in range(int(it[F["h0"]]), int(it[F["h0"]]) + int(it[F["nh"]])):
                spans.setdefault((t, int(it[F["kv_head"]]) * group + h), []).append(
                    (int(it[F["kv_start"]]), int(it[F["kv_end"]])))
    expected = {(starts[r] + i, h) for r, q in enumerate(query_lens) for i in range(q)
                for h in range(num_q_heads)}
    assert set(spans) == expected
    for (t, _), ranges in spans.items():
        r = max(i for i, s in enumerate(starts) if s <= t and query_lens[i] > 0)
        position = seq_lens[r] - query_lens[r] + (t - starts[r])
        ranges.sort()
        assert ranges[0][0] == 0
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        assert position < ranges[-1][1] <= seq_lens[r]


CASES = {
    # name: (query_lens, seq_lens, padded num_tokens, expected split, fused?)
    "decode_only": ([1, 1, 1], [5, 17, 33], None, (3, 0, 3, 0), False),
    "prefill_only": ([7, 20], [7, 50], None, (0, 2, 0, 27), False),
    "prefill_with_prefix": ([300], [1000], None, (0, 1, 0, 300), False),
    "mixed": ([1, 1, 9, 30], [10, 100, 9, 64], None, (2, 2, 2, 39), True),
    "mixed_long_decodes": ([1] * 6 + [128], [4000, 17, 16, 15, 1, 2048, 640],
                           None, (6, 1, 6, 128), True),
    # CUDA-graph padding: rows of query length 0 and seq_len 0 after the real requests.
    "padded_decode_graph": ([1, 1, 1, 0, 0], [3, 4, 5, 0, 0], 5, (5, 0, 5, 0), False),
    "padded_mixed": ([1, 1, 12, 0, 0], [8, 9, 12, 0, 0], 16, (2, 3, 2, 14), True),
    # n-gram speculation: verify steps (1 + drafted tokens) come after the one-token decodes, as
    # prefills by vLLM's order, beside them or beside prefill chunks.
    "verify_steps_only": ([3, 3, 2], [40, 900, 17], None, (0, 3, 0, 8), False),
    "verify_steps_with_decodes": ([1, 1, 3, 3, 2], [30, 700, 41, 2000, 18], None,
                                  (2, 3, 2, 8), True),
    "verify_steps_with_chunk": ([1, 3, 3, 256], [64, 100, 4000, 1300], None, (1, 3, 1, 262), True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_builder_batches(builder, monkeypatch, name):
    query_lens, seq_lens, num_tokens, split, fused = CASES[name]
    cm = batch(query_lens, seq_lens, num_tokens)
    seen = []
    real_plan = builder.planner.plan
    monkeypatch.setattr(builder.planner, "plan", lambda *a: seen.append(a) or real_plan(*a))
    before = POD_STATS["hybrid_batches"]

    md = builder.build(common_prefix_len=0, common_attn_metadata=cm)

    assert (md.num_decodes, md.num_prefills, md.num_decode_tokens,
            md.num_prefill_tokens) == split
    assert md.num_actual_tokens == (num_tokens or sum(query_lens))
    assert md.block_table is cm.block_table_tensor
    assert (md.plan is not None) == fused and (md.fa_metadata is None) == fused
    assert POD_STATS["hybrid_batches"] - before == int(fused)
    if fused:
        (qsl, seq, num_decodes), = seen
        assert qsl.tolist() == [sum(query_lens[:i]) for i in range(len(query_lens) + 1)]
        assert seq.tolist() == seq_lens and num_decodes == split[0]
        # Tiles by rows: a query whose GQA rows fit 16 takes a decode tile (the verify steps
        # of 2-4 tokens at 4 query heads per KV head), longer ones prefill tiles.
        rows = [q * (NUM_Q_HEADS // NUM_KV_HEADS) for q in query_lens if q]
        assert md.plan.num_decode_items > 0
        assert (md.plan.num_prefill_items > 0) == any(r > 16 for r in rows)
        check_coverage(md.plan, query_lens, seq_lens)
    else:
        assert not seen
        fa = md.fa_metadata
        assert fa.query_start_loc is cm.query_start_loc and fa.seq_lens is cm.seq_lens
        assert (fa.max_query_len, fa.max_seq_len) == (max(query_lens), max(seq_lens))


def test_builder_splits_batches_as_vllm_does(builder):
    rng = random.Random(15)
    for _ in range(200):
        query_lens = ([1] * rng.randint(0, 6) + [rng.randint(1, 40) for _ in range(rng.randint(0, 5))]
                      + [0] * rng.choice([0, 0, 3]))
        if not any(query_lens):
            continue
        cm = batch(query_lens, [q + rng.randint(0, 100) for q in query_lens])
        assert builder._split_decodes_and_prefills(cm) == split_decodes_and_prefills(
            cm, decode_threshold=builder.reorder_batch_threshold)


@pytest.fixture(scope="module")
def llama_70b_dir(model_dir):
    """Llama-3-70B's attention: 64 query heads over 8 KV heads, head dim 128."""
    return model_variant(model_dir, "llama-70b-attention", num_attention_heads=64,
                         num_key_value_heads=8, hidden_size=64 * HEAD_DIM)


@pytest.mark.parametrize("tensor_parallel_size, rank_heads",
                         [(2, (32, 4)), (4, (16, 2)), (8, (8, 1))], ids=["tp2", "tp4", "tp8"])
def test_builder_plans_one_tensor_parallel_ranks_heads(monkeypatch, llama_70b_dir,
                                                       tensor_parallel_size, rank_heads):
    """With tensor parallelism every rank runs attention over its share of the heads, and its
    builder must plan for that share: vLLM's per-rank head counts come from the parallel config's
    size alone, so no distributed setup is needed to build the rank's builder."""
    config = make_config(llama_70b_dir, tensor_parallel_size=tensor_parallel_size)
    with set_current_vllm_config(config):
        builder = make_builder(monkeypatch, config)
        planner = builder.planner
        assert (planner.num_q_heads, planner.num_kv_heads, planner.head_dim) == (
            *rank_heads, HEAD_DIM)
        query_lens, seq_lens, _, split, _ = CASES["mixed_long_decodes"]
        md = builder.build(common_prefix_len=0, common_attn_metadata=batch(query_lens, seq_lens))
    assert (md.num_decodes, md.num_prefills) == split[:2] and md.plan is not None
    check_coverage(md.plan, query_lens, seq_lens, *rank_heads)


def test_builder_many_prefills(builder):
    rng = random.Random()
    query_lens = [1] * rng.randint(1, 20) + [rng.randint(2, 200) for _ in range(40)]
    seq_lens = [q + rng.choice([0, rng.randint(1, 3000)]) for q in query_lens]
    md = builder.build(common_prefix_len=0, common_attn_metadata=batch(query_lens, seq_lens))
    num_decodes = query_lens.count(1)
    assert (md.num_decodes, md.num_prefills) == (num_decodes, 40)
    assert md.num_prefill_tokens == sum(query_lens[num_decodes:])
    check_coverage(md.plan, query_lens, seq_lens)


def test_builder_cudagraph_capture(builder):
    # Where full graphs hold only uniform decode batches (the default mode), FA3 is captured.
    assert builder.vllm_config.compilation_config.cudagraph_mode.mixed_mode() != CUDAGraphMode.FULL
    md = builder.build_for_cudagraph_capture(batch([1] * 4 + [0] * 4, [1] * 4 + [0] * 4, 8))
    assert md.plan is None and md.num_decodes == 8 and md.num_actual_tokens == 8
    assert md.fa_metadata.max_query_len == 1


@pytest.mark.parametrize("mode", ["FULL", "FULL_AND_PIECEWISE", "FULL_DECODE_ONLY", "PIECEWISE"])
def test_vllm_keeps_every_cudagraph_mode(model_dir, mode):
    """vLLM downgrades a mode that the backend's declared support cannot serve; POD's must not be."""
    config = make_config(model_dir, compilation_config=CompilationConfig(cudagraph_mode=mode))
    support = PodAttentionMetadataBuilder.get_cudagraph_support(config, None)
    compilation = config.compilation_config
    compilation.cudagraph_mode = CUDAGraphMode[mode]  # as the user asked, before vLLM resolves it
    resolved = compilation.resolve_cudagraph_mode_and_sizes(support, "POD")
    assert resolved == CUDAGraphMode[mode]


@pytest.mark.parametrize("name", ["decode_only", "prefill_only", "mixed", "padded_decodes"])
def test_full_graphs_of_mixed_batches_run_every_batch_fused(monkeypatch, model_dir, name):
    """Under cudagraph_mode FULL a graph captured for one batch replays for batches of any
    composition of the same padded size: every batch, captured or built, must take the fused
    kernel (the plan), never FA3's, and the plan must cover exactly the batch's real rows."""
    query_lens, seq_lens, num_tokens = {
        "decode_only": ([1, 1, 1], [5, 17, 33], None),
        "prefill_only": ([7, 40], [7, 90], None),
        "mixed": ([1, 1, 30], [9, 300, 64], None),
        "padded_decodes": ([1] * 3 + [0] * 5, [40, 2, 7] + [0] * 5, 8),
    }[name]
    config = make_config(model_dir, compilation_config=CompilationConfig(cudagraph_mode="FULL"))
    config.compilation_config.cudagraph_mode = CUDAGraphMode.FULL  # as vLLM resolves it
    with set_current_vllm_config(config):
        builder = make_builder(monkeypatch, config)
        cm = batch(query_lens, seq_lens, num_tokens)
        for md in (builder.build(0, cm), builder.build_for_cudagraph_capture(cm)):
            assert md.plan is not None and md.fa_metadata is None
            assert md.num_actual_tokens == cm.num_actual_tokens
            check_coverage(md.plan, query_lens, seq_lens)


def test_plans_reuse_persistent_buffers(builder):
    a = builder.build(0, batch([1, 50], [20, 80])).plan
    b = builder.build(0, batch([1, 1, 7], [3, 900, 7])).plan
    assert a.buffer.data_ptr() == b.buffer.data_ptr() == builder.planner.buffer.data_ptr()
    assert a.counters.data_ptr() == b.counters.data_ptr()
    assert a.workspace.data_ptr() == b.workspace.data_ptr()


# -- impl dispatch -----------------------------------------------------------------------------

@pytest.fixture
def impl(model_dir):
    with set_current_vllm_config(make_config(model_dir)):
        return PodAttentionImpl(NUM_Q_HEADS, HEAD_DIM, 0.125, NUM_KV_HEADS, None, None, "auto")


def kv_cache(num_blocks=6):
    # vLLM 0.26's default physical layout (blocks, block size, kv heads, 2*D), viewed logically.
    return torch.randn(num_blocks, BLOCK, NUM_KV_HEADS, 2 * HEAD_DIM).permute(0, 2, 1, 3)


def test_forward_hybrid_calls_fused_kernel(builder, impl, monkeypatch):
    calls = []
    monkeypatch.setattr(pod_backend, "pod_attention", lambda *a, **kw: calls.append(a))
    md = builder.build(0, batch([1, 1, 9], [10, 100, 9], num_tokens=16))
    cache = kv_cache()
    query = torch.randn(16, NUM_Q_HEADS, HEAD_DIM)
    out = torch.empty(16, NUM_Q_HEADS, HEAD_DIM)
    before = POD_STATS["fused_calls"]

    assert impl.forward(None, query, None, None, cache, md, out) is out

    (o, q, k, v, block_table, plan, scale), = calls
    # Padded token count, as FLASH_ATTN passes it: padding rows belong to no request.
    assert o.shape[0] == q.shape[0] == 16 and o.data_ptr() == out.data_ptr()
    assert q.data_ptr() == query.data_ptr()
    assert k.shape == v.shape == (6, BLOCK, NUM_KV_HEADS, HEAD_DIM)
    assert k.data_ptr() == cache.data_ptr()  # views of the cache, no copies
    assert v.data_ptr() == cache.data_ptr() + HEAD_DIM * cache.element_size()
    assert torch.equal(k[2, 3, 1], cache[2, 1, 3, :HEAD_DIM])
    assert torch.equal(v[2, 3, 1], cache[2, 1, 3, HEAD_DIM:])
    assert block_table is md.block_table and plan is md.plan and scale == 0.125
    assert POD_STATS["fused_calls"] - before == 1


@pytest.mark.parametrize("query_lens, seq_lens", [([1, 1], [4, 9]), ([5, 9], [5, 30])])
def test_forward_single_phase_goes_to_flash_attn(builder, impl, monkeypatch, query_lens,
                                                 seq_lens):
    monkeypatch.setattr(pod_backend, "pod_attention", lambda *a: pytest.fail("fused kernel"))
    calls = []
    monkeypatch.setattr(impl.fa_impl, "forward", lambda *a: calls.append(a) or a[-1])
    md = builder.build(0, batch(query_lens, seq_lens))
    out = torch.empty(sum(query_lens), NUM_Q_HEADS, HEAD_DIM)
    assert impl.forward("layer", torch.randn_like(out), "k", "v", "cache", md, out) is out
    (layer, _, k, v, cache, fa_metadata, _), = calls
    assert (layer, k, v, cache) == ("layer", "k", "v", "cache")
    assert fa_metadata is md.fa_metadata


def test_sliding_window_groups_plan_their_window(monkeypatch, model_dir):
    # A sliding-window group's layers all have its window: plans are cut to it. A full-attention
    # group may hold window layers beside global ones (hybrid KV cache manager off): whole key
    # ranges, the kernel masks by each layer's window.
    config = make_config(model_dir)
    with set_current_vllm_config(config):
        window = make_builder(monkeypatch, config, SlidingWindowSpec, sliding_window=64)
        full = make_builder(monkeypatch, config, FullAttentionSpec, sliding_window=64)
        plain = make_builder(monkeypatch, config)
    assert window.planner.sliding_window == 64
    assert full.planner.sliding_window is None and plain.planner.sliding_window is None
    query_lens, seq_lens = [1, 1, 300], [1000, 90, 800]
    cut = window.build(0, batch(query_lens, seq_lens)).plan
    assert cut.sliding_window == 64
    items = cut.items
    # Every item's keys start at or after its first row's window, rounded down to 64 keys.
    first_pos = items[:, 6]
    assert (items[:, 7] >= (first_pos - 63).clip(0) // 64 * 64).all()
    whole = full.build(0, batch(query_lens, seq_lens)).plan
    assert whole.sliding_window is None and whole.items[:, 7].min() == 0


@pytest.mark.parametrize("windows, aot_schedule, aot_window", [
    ([None, None], True, (-1, -1)),
    ([64, 64], True, (63, 0)),     # Mistral v0.1
    ([64, None], False, None),     # Gemma 2 and 3, gpt-oss: FA3 schedules each call itself
])
def test_flash_attn_schedule_is_flash_attns_for_the_model(monkeypatch, model_dir, windows,
                                                          aot_schedule, aot_window):
    # FLASH_ATTN's builder gives FA3's ahead-of-time schedule the layers' window where all share
    # one and drops it where they differ; it reads the windows from FLASH_ATTN's impls, so POD's
    # builder hands it its layers' (a schedule made without the call's soft-cap, as the first
    # form of this did for Gemma 2, moved its decode logprobs by 0.1 nats on average).
    config = make_config(model_dir)
    with set_current_vllm_config(config):
        layers = {f"layer.{i}": mock.Mock(impl=PodAttentionImpl(
            NUM_Q_HEADS, HEAD_DIM, 0.125, NUM_KV_HEADS, None, w, "auto", 30.0))
            for i, w in enumerate(windows)}
        b = make_builder(monkeypatch, config)
    monkeypatch.setattr(pod_backend, "get_layers_from_vllm_config", lambda *a: layers)
    b.fa_builder.aot_schedule = True  # as on a GPU with FA3
    b._set_fa_schedule()
    assert b.fa_builder.aot_schedule == aot_schedule
    if aot_schedule:
        assert b.fa_builder.aot_sliding_window == aot_window
    # The first build sets it, once.
    calls = []
    monkeypatch.setattr(b, "_set_fa_schedule", lambda: calls.append(1) or setattr(
        b, "_fa_schedule_set", True))
    b._fa_schedule_set = False
    for _ in range(2):
        b.build(0, batch([1, 9], [10, 9]))
    assert calls == [1]


def test_forward_passes_the_layers_features(builder, model_dir, monkeypatch):
    calls, fa_args = [], []
    monkeypatch.setattr(pod_backend, "pod_attention", lambda *a, **kw: calls.append(kw))
    monkeypatch.setattr(pod_backend, "FlashAttentionImpl",
                        lambda *a, **kw: fa_args.append((a, kw)) or mock.Mock())
    sinks = torch.randn(NUM_Q_HEADS)
    with set_current_vllm_config(make_config(model_dir)):
        impl = PodAttentionImpl(NUM_Q_HEADS, HEAD_DIM, 0.125, NUM_KV_HEADS, None, 512, "auto",
                                30.0, sinks=sinks)
    # Single-phase batches run FLASH_ATTN's impl: built with the same features.
    (args, kwargs), = fa_args
    assert args[5] == 512 and args[7] == 30.0 and kwargs["sinks"] is sinks
    md = builder.build(0, batch([1, 9], [10, 9]))
    impl.forward(None, torch.randn(10, NUM_Q_HEADS, HEAD_DIM), None, None, kv_cache(), md,
                 torch.empty(10, NUM_Q_HEADS, HEAD_DIM))
    (features,), = [calls]
    assert features == dict(logits_soft_cap=30.0, sliding_window=512, sinks=sinks)


def test_fp8_forward_passes_the_layers_descales_and_takes_a_quantized_query(builder, model_dir,
                                                                          monkeypatch):
    calls = []
    monkeypatch.setattr(pod_backend, "pod_attention", lambda *a, **kw: calls.append((a, kw)))
    # FLASH_ATTN's impl as on a Hopper GPU with FA3 (newer vLLM checks the device when built).
    monkeypatch.setattr(pod_backend, "FlashAttentionImpl",
                        lambda *a, **kw: mock.Mock(supports_quant_query_input=True))
    with set_current_vllm_config(make_config(model_dir)):
        impl = PodAttentionImpl(NUM_Q_HEADS, HEAD_DIM, 0.125, NUM_KV_HEADS, None, None, "fp8")
    # The layer quantizes the query to e4m3 for POD as it does for FLASH_ATTN.
    assert impl.supports_quant_query_input

    class Layer:
        _q_scale, _k_scale, _v_scale = torch.tensor(0.5), torch.tensor(0.25), torch.tensor(2.0)

    md = builder.build(0, batch([1, 9], [10, 9]))
    cache = kv_cache().to(torch.float8_e4m3fn).view(torch.uint8)  # vLLM 0.26 keeps fp8 as uint8
    impl.forward(Layer, torch.randn(10, NUM_Q_HEADS, HEAD_DIM).to(torch.float8_e4m3fn), None, None,
                 cache, md, torch.empty(10, NUM_Q_HEADS, HEAD_DIM, dtype=torch.bfloat16))
    ((out, q, k, v, *_), kw), = calls
    assert q.dtype == torch.float8_e4m3fn and out.dtype == torch.bfloat16
    assert k.data_ptr() == cache.data_ptr()
    assert kw["q_descale"] is Layer._q_scale and kw["k_descale"] is Layer._k_scale
    assert kw["v_descale"] is Layer._v_scale


def test_fp8_refused_where_flash_attn_takes_a_16_bit_query(model_dir, monkeypatch):
    # Newer vLLM may run FA4's fp8 path on Hopper, which takes the query unquantized: the fused
    # kernel could not take the query the layer then passes.
    monkeypatch.setattr(pod_backend, "FlashAttentionImpl",
                        lambda *a, **kw: mock.Mock(supports_quant_query_input=False))
    with set_current_vllm_config(make_config(model_dir)):
        with pytest.raises(NotImplementedError, match="takes a 16-bit query here"):
            PodAttentionImpl(NUM_Q_HEADS, HEAD_DIM, 0.125, NUM_KV_HEADS, None, None, "fp8")
        # A 16-bit cache never asks for a quantized query.
        PodAttentionImpl(NUM_Q_HEADS, HEAD_DIM, 0.125, NUM_KV_HEADS, None, None, "auto")


def test_forward_profiling_run_zeroes_output(impl):
    out = torch.randn(4, NUM_Q_HEADS, HEAD_DIM)
    assert impl.forward(None, torch.randn_like(out), None, None, kv_cache(), None, out) is out
    assert not out.any()


def test_kv_cache_update_writes_through_reshape_and_cache_flash(impl, monkeypatch):
    calls = []
    monkeypatch.setattr(pod_backend, "reshape_and_cache_flash", lambda *a: calls.append(a))

    class Layer:
        _k_scale = torch.ones(())
        _v_scale = torch.ones(())

    cache, slots = kv_cache(), torch.tensor([3, 17, -1])
    key = torch.randn(4, NUM_KV_HEADS, HEAD_DIM)
    impl.do_kv_cache_update(Layer, key, key, cache, slots)
    (k_in, _, k, v, slot_mapping, dtype, k_scale, v_scale), = calls
    assert k_in is key and slot_mapping is slots and dtype == "auto"
    assert k.shape == v.shape == (6, BLOCK, NUM_KV_HEADS, HEAD_DIM)
    assert v.data_ptr() == cache.data_ptr() + HEAD_DIM * cache.element_size()
    assert k_scale is Layer._k_scale and v_scale is Layer._v_scale
