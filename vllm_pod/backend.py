"""The POD attention backend for vLLM: backend class, metadata builder and impl.

A hybrid batch (decodes and chunked prefills together) runs as ONE launch of the fused POD
kernel (vllm_pod.ops.pod_attention). A batch of only decodes or only prefills gains nothing from
fusion, so it runs through vLLM's own FlashAttention (FA3) builder and impl, unchanged: that keeps
those batches exactly as fast as FLASH_ATTN and gives full CUDA graphs for pure-decode batches the
way FLASH_ATTN captures them. `PodAttentionMetadataBuilder._build` is the one place that chooses.

CUDA graphs: every mode vLLM offers (AttentionCGSupport.ALWAYS). Where full graphs hold only
uniform decode batches (FULL_AND_PIECEWISE, the default, and FULL_DECODE_ONLY), those run FA3
inside the graph and mixed batches run the fused kernel eagerly between graph pieces. Where full
graphs hold mixed batches too (FULL), a graph captured for one batch replays for batches of any
composition with the same padded size, so the kernel it holds must not depend on the composition:
there every batch runs the fused kernel, whose plan lives in persistent buffers that build()
refills before each replay.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from vllm._custom_ops import reshape_and_cache_flash
from vllm.config import (CUDAGraphMode, VllmConfig, get_current_vllm_config_or_none,
                         get_layers_from_vllm_config)
from vllm.logger import init_logger
from vllm.model_executor.layers.attention import Attention
from vllm.platforms.interface import DeviceCapability
from vllm.v1.attention.backend import (
    AttentionBackend,
    AttentionCGSupport,
    AttentionImpl,
    AttentionMetadataBuilder,
    AttentionType,
    CommonAttentionMetadata,
)
from vllm.v1.attention.backends.flash_attn import (
    FlashAttentionImpl,
    FlashAttentionMetadata,
    FlashAttentionMetadataBuilder,
)
from vllm.v1.kv_cache_interface import AttentionSpec, SlidingWindowSpec

from vllm_pod import compat
from vllm_pod.ops import (
    BUILD_COMMAND,
    FP8_KV_CACHE_DTYPES,
    SUPPORTED_BLOCK_SIZES,
    SUPPORTED_DTYPES,
    SUPPORTED_HEAD_SIZES,
    device_ctas_per_sm,
    device_prefill_tile_rows,
    extension_load_error,
    pod_attention,
)
from vllm_pod.plan import PodPlan, PodPlanner

logger = init_logger("vllm.pod.backend")

# Proof that the fused path ran, for tests and end-to-end checks in this process:
# "hybrid_batches" counts batches the builder planned for the fused kernel (one per step and KV
# cache group), "fused_calls" counts kernel launches (one per attention layer of such a step).
# Across processes, the per-batch debug line below (VLLM_LOGGING_LEVEL=DEBUG) says the same, and
# an INFO line counts them (after the 1st, 10th and every 10000th).
POD_STATS: Counter[str] = Counter()


class PodAttentionBackend(AttentionBackend):
    supported_dtypes: ClassVar[list[torch.dtype]] = list(SUPPORTED_DTYPES)
    # fp8 is e4m3 (FLASH_ATTN's FA3 takes no e5m2), on compute capability 9.0 only.
    supported_kv_cache_dtypes: ClassVar[list[str]] = ["auto", "float16", "bfloat16",
                                                      *FP8_KV_CACHE_DTYPES]
    # The KV write is a separate op (do_kv_cache_update), as in FLASH_ATTN.
    forward_includes_kv_cache_update: bool = False

    @staticmethod
    def get_name() -> str:
        return compat.backend_name()

    @staticmethod
    def get_impl_cls() -> type[PodAttentionImpl]:
        return PodAttentionImpl

    @staticmethod
    def get_builder_cls() -> type[PodAttentionMetadataBuilder]:
        return PodAttentionMetadataBuilder

    # vLLM 0.26 passes no argument, 0.33 the layer's KV cache spec.
    @staticmethod
    def get_supported_kernel_block_sizes(kv_cache_spec=None) -> list[int]:
        return list(SUPPORTED_BLOCK_SIZES)

    @classmethod
    def get_supported_head_sizes(cls) -> list[int]:
        return list(SUPPORTED_HEAD_SIZES)

    @classmethod
    def supports_sink(cls) -> bool:
        return True

    @classmethod
    def supports_sliding_window(cls) -> bool:
        return True

    @classmethod
    def supports_compute_capability(cls, capability: DeviceCapability) -> bool:
        # The extension is built for sm_80 (runs on 8.x) and sm_90a (runs on 9.0 only).
        return capability.major == 8 or capability == DeviceCapability(9, 0)

    @classmethod
    def validate_configuration(cls, **selector) -> list[str]:
        """vLLM's selector asks this of the backend the user chose, while the model is being
        built: whatever POD cannot serve is refused here, before any weight loads. vLLM passes the
        selector's fields as keywords (newer versions pass more); the rest of the serving
        configuration comes from the current VllmConfig."""
        capability = selector["device_capability"]
        reasons = [r for r in super().validate_configuration(**selector)
                   if r not in ("compute capability not supported", "kv_cache_dtype not supported")]
        if not cls.supports_kv_cache_dtype(selector.get("kv_cache_dtype")):
            reasons.append(f"POD attention supports KV cache dtypes "
                           f"{'/'.join(cls.supported_kv_cache_dtypes)}, not "
                           f"{selector['kv_cache_dtype']}")
        if not cls.supports_compute_capability(capability):
            reasons.append(f"POD attention runs on compute capability 8.x (A100) and 9.0 "
                           f"(H100/H200), not {capability.major}.{capability.minor}")
        elif selector.get("has_sink") and capability.major < 9:
            # Single-phase batches run FLASH_ATTN's impl, whose sinks need FlashAttention 3.
            reasons.append("POD attention supports attention sinks on compute capability 9.0 "
                           "(H100/H200) only")
        if selector.get("kv_cache_dtype") in FP8_KV_CACHE_DTYPES:
            if capability.major != 9:
                reasons.append("POD attention supports an fp8 KV cache on compute capability 9.0 "
                               "(H100/H200) only, as FLASH_ATTN's FA3 does")
            if selector["dtype"] != torch.bfloat16:
                # FA3 writes fp8 attention's output in bf16 only.
                reasons.append("POD attention supports an fp8 KV cache in bfloat16 models only "
                               "(FLASH_ATTN's FA3, which runs single-phase batches, writes its "
                               "fp8 output in bf16)")
        if selector.get("has_sink") and selector["dtype"] == torch.float16:
            # Models keep their sinks in the model's dtype; FA3 takes bf16 sinks only.
            reasons.append("POD attention supports attention sinks in bfloat16 models only "
                           "(FLASH_ATTN's FA3, which runs single-phase batches, takes bf16 sinks)")
        error = extension_load_error()
        if error is not None:
            reasons.append(f"POD attention's compiled extension vllm_pod._C does not load "
                           f"({error}); build it in the vllm-pod source tree with "
                           f"`{BUILD_COMMAND}`")
        vllm_config = get_current_vllm_config_or_none()
        if vllm_config is not None:
            reasons += _unsupported_features(vllm_config)
        if not reasons:
            # The way to confirm which backend served: vLLM itself only names CUSTOM (0.26).
            logger.info_once("Using POD attention (vllm-pod): %s", (
                "every batch runs its fused kernel (full CUDA graphs of mixed batches)"
                if vllm_config is not None and _full_graphs_hold_mixed_batches(vllm_config)
                else "hybrid prefill+decode batches run its fused kernel, the others FLASH_ATTN's "
                     "kernels"))
        return reasons

    @classmethod
    def supports_device_cpu_query_lens_mismatch(cls) -> bool:
        # vLLM 0.33 hook: the plan is built from the CPU query lengths, which must be exact.
        return False

    # The base class already refuses MLA, non-causal, encoder and cross-attention (supports_*
    # default to False / decoder only); ALiBi is not part of the selector's configuration, so
    # PodAttentionImpl refuses it (it is built with the model, also before the weights load).

    # vLLM 0.26 only: the logical KV cache shape (K and V packed in the last dim, as FLASH_ATTN)
    # and its physical order. Newer vLLM fixes this shape itself; the kernel takes any strides.
    @staticmethod
    def get_kv_cache_shape(num_blocks: int, block_size: int, num_kv_heads: int, head_size: int,
                           cache_dtype_str: str = "auto") -> tuple[int, ...]:
        return (num_blocks, num_kv_heads, block_size, 2 * head_size)

    @staticmethod
    def get_kv_cache_stride_order(include_num_layers_dimension: bool = False) -> tuple[int, ...]:
        return compat.kv_cache_stride_order(include_num_layers_dimension)


def _flash_attn_window_configs(vllm_config: VllmConfig) -> set[tuple[int, int]]:
    """The (left, right) windows of the model's POD layers as FLASH_ATTN's impls hold them
    ((-1, -1) without one)."""
    layers = get_layers_from_vllm_config(vllm_config, Attention)
    return {layer.impl.fa_impl.sliding_window for layer in layers.values()
            if isinstance(layer.impl, PodAttentionImpl)}


def _full_graphs_hold_mixed_batches(vllm_config: VllmConfig) -> bool:
    """Whether a full CUDA graph may replay for batches of another composition than the one it
    captured (cudagraph_mode FULL): then every batch must run the fused kernel."""
    mode = vllm_config.compilation_config.cudagraph_mode
    return mode is not None and mode.mixed_mode() == CUDAGraphMode.FULL


def _unsupported_features(vllm_config: VllmConfig) -> list[str]:
    """Serving features outside the selector's fields that POD refuses, each with its reason."""
    reasons = []
    speculative = vllm_config.speculative_config
    if speculative is not None:
        # Verify steps are short multi-token queries of the target model: planned as vLLM orders
        # them (past the one-token decodes, as prefills), exact only with the host's lengths
        # exact. Asynchronous scheduling makes them guesses, and drafting models run attention
        # steps of their own.
        if speculative.method != "ngram":
            reasons.append(f"POD attention supports n-gram speculative decoding only, not "
                           f"{speculative.method}")
        elif vllm_config.scheduler_config.async_scheduling:
            reasons.append("POD attention plans each step from the host's sequence lengths, which "
                           "asynchronous scheduling with speculative decoding only estimates: "
                           "serve with --no-async-scheduling")
    if vllm_config.parallel_config.use_ubatching:
        reasons.append("POD attention does not support dual-batch overlap or micro-batching "
                       "(--enable-dbo, --ubatch-size): every plan lives in one device buffer, "
                       "which a second micro-batch's plan would overwrite before the first runs")
    model_config = vllm_config.model_config
    if model_config is not None and model_config.attention_chunk_size is not None:
        reasons.append("POD attention does not support chunked local attention "
                       f"(attention_chunk_size={model_config.attention_chunk_size}, as in "
                       "Llama 4): vLLM hands it virtual batches whose host sequence lengths are "
                       "the unchunked ones")
    return reasons


@dataclass
class PodAttentionMetadata:
    num_actual_tokens: int  # including CUDA-graph padding
    num_decodes: int
    num_prefills: int
    num_decode_tokens: int
    num_prefill_tokens: int
    block_table: torch.Tensor
    # Exactly one of the two is set: a plan for the fused kernel (hybrid batch) or FA3's metadata.
    plan: PodPlan | None
    fa_metadata: FlashAttentionMetadata | None


def _device_occupancy(device: torch.device, dtype: torch.dtype, head_dim: int) -> tuple[int, int]:
    """(SMs, fused-kernel CTAs per SM) of the GPU this builder plans for."""
    num_sms = torch.cuda.get_device_properties(device).multi_processor_count
    return num_sms, device_ctas_per_sm(dtype, head_dim)


class PodAttentionMetadataBuilder(AttentionMetadataBuilder[PodAttentionMetadata]):
    # Full graphs of any batch: see the module docstring for which kernel each mode captures.
    _cudagraph_support: ClassVar[AttentionCGSupport] = AttentionCGSupport.ALWAYS
    # Decodes (query length 1) first: the kernel and split_decodes_and_prefills rely on it.
    reorder_batch_threshold: int = 1

    def __init__(self, kv_cache_spec: AttentionSpec, layer_names: list[str],
                 vllm_config: VllmConfig, device: torch.device):
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        if kv_cache_spec.block_size not in SUPPORTED_BLOCK_SIZES:
            raise ValueError(f"POD attention supports kernel block sizes {SUPPORTED_BLOCK_SIZES}, "
                             f"got {kv_cache_spec.block_size}")
        self.fa_builder = FlashAttentionMetadataBuilder(kv_cache_spec, layer_names, vllm_config,
                                                        device)
        # Every layer of a sliding-window group has its window; a full-attention group may hold
        # window layers too (hybrid KV cache manager off), each masked by the kernel alone.
        group_window = (kv_cache_spec.sliding_window if isinstance(kv_cache_spec, SlidingWindowSpec)
                        else None)
        self._fa_schedule_set = False
        num_sms, ctas_per_sm = _device_occupancy(device, kv_cache_spec.dtype,
                                                 kv_cache_spec.head_size)
        # Padded CUDA-graph batches may exceed the scheduler's limits up to the capture size.
        max_graph = vllm_config.compilation_config.max_cudagraph_capture_size or 0
        scheduler = vllm_config.scheduler_config
        self.planner = PodPlanner(
            num_q_heads=vllm_config.model_config.get_num_attention_heads(
                vllm_config.parallel_config),
            num_kv_heads=kv_cache_spec.num_kv_heads,
            head_dim=kv_cache_spec.head_size,
            block_size=kv_cache_spec.block_size,
            num_sms=num_sms,
            ctas_per_sm=ctas_per_sm,
            max_num_reqs=max(scheduler.max_num_seqs, max_graph),
            max_num_tokens=max(scheduler.max_num_batched_tokens, max_graph),
            device=device,
            prefill_rows=device_prefill_tile_rows(kv_cache_spec.dtype, kv_cache_spec.head_size),
            # Key ranges are cut to the window only where every layer of the group has it.
            sliding_window=group_window,
        )

    def build(self, common_prefix_len: int, common_attn_metadata: CommonAttentionMetadata,
              fast_build: bool = False) -> PodAttentionMetadata:
        return self._build(common_attn_metadata, lambda: self.fa_builder.build(
            common_prefix_len, common_attn_metadata, fast_build))

    def build_for_cudagraph_capture(
            self, common_attn_metadata: CommonAttentionMetadata) -> PodAttentionMetadata:
        return self._build(common_attn_metadata, lambda: (
            self.fa_builder.build_for_cudagraph_capture(common_attn_metadata)))

    def _split_decodes_and_prefills(self, cm: CommonAttentionMetadata) -> tuple[int, int, int, int]:
        """vLLM's split_decodes_and_prefills (decodes first, every request from the first longer
        query on counts as prefill, CUDA-graph padding included), in numpy: the torch version
        costs a fifth of a hybrid batch's planning time."""
        if cm.max_query_len <= self.reorder_batch_threshold:
            return cm.num_reqs, 0, cm.num_actual_tokens, 0
        qsl = cm.query_start_loc_cpu.numpy()[:cm.num_reqs + 1]
        first_prefill = int(np.argmax(qsl[1:] - qsl[:-1] > self.reorder_batch_threshold))
        num_decode_tokens = int(qsl[first_prefill])
        return (first_prefill, cm.num_reqs - first_prefill, num_decode_tokens,
                cm.num_actual_tokens - num_decode_tokens)

    def _set_fa_schedule(self) -> None:
        """FA3's ahead-of-time schedule as FLASH_ATTN's builder sets it for the same model: the
        layers' window where all have one, none where they differ (FA3 then schedules each call
        itself, knowing the call's soft-cap, which the ahead-of-time schedule is not told). That
        builder reads the windows from FLASH_ATTN's impls only, so it is given POD's layers'. Done
        on the first build, once the layers exist, as that builder does."""
        windows = _flash_attn_window_configs(self.vllm_config)
        if len(windows) > 1:
            self.fa_builder.aot_schedule = False
        elif windows:
            self.fa_builder.aot_sliding_window = windows.pop()
        self._fa_schedule_set = True

    def _build(self, cm: CommonAttentionMetadata,
               build_fa: Callable[[], FlashAttentionMetadata]) -> PodAttentionMetadata:
        if not self._fa_schedule_set:
            self._set_fa_schedule()
        num_decodes, num_prefills, num_decode_tokens, num_prefill_tokens = (
            self._split_decodes_and_prefills(cm))
        plan = fa_metadata = None
        hybrid = num_decodes > 0 and num_prefills > 0
        # The mode is read per call: vLLM settles it after the builders are made.
        if hybrid or _full_graphs_hold_mixed_batches(self.vllm_config):
            # CPU lengths only: no device->host sync. Padding rows (query length 0) get no work.
            plan = self.planner.plan(cm.query_start_loc_cpu, compat.seq_lens_cpu(cm), num_decodes)
            if hybrid:
                POD_STATS["hybrid_batches"] += 1
                n = POD_STATS["hybrid_batches"]
                if n in (1, 10) or n % 10000 == 0:
                    # At INFO, so a serving log shows the fused path ran without debug logging.
                    logger.info("POD: %d hybrid batches planned for the fused kernel so far", n)
            logger.debug("POD fused batch: %d decodes, %d prefills (%d tokens, longest %d), %d "
                         "prefill + %d decode work items", num_decodes, num_prefills,
                         num_prefill_tokens, cm.max_query_len, plan.num_prefill_items,
                         plan.num_decode_items)
        else:
            fa_metadata = build_fa()
        return PodAttentionMetadata(
            num_actual_tokens=cm.num_actual_tokens,
            num_decodes=num_decodes,
            num_prefills=num_prefills,
            num_decode_tokens=num_decode_tokens,
            num_prefill_tokens=num_prefill_tokens,
            block_table=cm.block_table_tensor,
            plan=plan,
            fa_metadata=fa_metadata,
        )


class PodAttentionImpl(AttentionImpl[PodAttentionMetadata]):
    # The fused kernel neither returns the softmax LSE nor knows context-parallel KV shards.
    supports_dcp: bool = False

    def __init__(
        self,
        num_heads: int,
        head_size: int,
        scale: float,
        num_kv_heads: int,
        alibi_slopes: list[float] | None,
        sliding_window: int | None,
        kv_cache_dtype: str,
        logits_soft_cap: float | None = None,
        attn_type: str = AttentionType.DECODER,
        kv_sharing_target_layer_name: str | None = None,
        sinks: torch.Tensor | None = None,
    ) -> None:
        unsupported = [reason for reason, present in (
            ("ALiBi", alibi_slopes is not None),
            (f"attention type {attn_type}", attn_type != AttentionType.DECODER),
            (f"kv_cache_dtype {kv_cache_dtype}",
             kv_cache_dtype not in PodAttentionBackend.supported_kv_cache_dtypes),
            (f"head size {head_size}", head_size not in SUPPORTED_HEAD_SIZES),
            (f"{num_heads} query heads over {num_kv_heads} KV heads",
             num_heads % num_kv_heads != 0),
        ) if present]
        if unsupported:
            raise NotImplementedError("POD attention does not support: " + ", ".join(unsupported))
        self.num_heads = num_heads
        self.head_size = head_size
        self.scale = float(scale)
        self.num_kv_heads = num_kv_heads
        self.kv_cache_dtype = kv_cache_dtype
        self.attn_type = attn_type
        self.kv_sharing_target_layer_name = kv_sharing_target_layer_name
        self.window = sliding_window  # FLASH_ATTN's impl keeps it as (window - 1, 0)
        self.logits_soft_cap = logits_soft_cap or None
        # The layer's parameter itself (its weights load later), read by the kernel in its dtype.
        self.sinks = sinks
        self.fp8 = kv_cache_dtype in FP8_KV_CACHE_DTYPES
        # Single-phase batches run through FLASH_ATTN's impl on FLASH_ATTN's metadata.
        self.fa_impl = FlashAttentionImpl(num_heads, head_size, scale, num_kv_heads, None,
                                          sliding_window, kv_cache_dtype, logits_soft_cap,
                                          attn_type, kv_sharing_target_layer_name, sinks=sinks)
        # With an fp8 cache the layer quantizes the query to e4m3 for FA3, as for FLASH_ATTN;
        # the fused kernel takes the same query, so it needs a FLASH_ATTN that asks for it.
        self.supports_quant_query_input = self.fa_impl.supports_quant_query_input
        if self.fp8 and not self.supports_quant_query_input:
            raise NotImplementedError(
                "POD attention's fp8 KV cache takes the e4m3 query that FLASH_ATTN's FA3 takes; "
                "this vLLM's FLASH_ATTN takes a 16-bit query here (FA4's fp8 path): serve "
                "with --kv-cache-dtype auto, or with FLASH_ATTN")

    def forward(
        self,
        layer: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        attn_metadata: PodAttentionMetadata,
        output: torch.Tensor,
        output_scale: torch.Tensor | None = None,
        output_block_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if output_scale is not None or output_block_scale is not None:
            raise NotImplementedError("POD attention does not fuse output quantization")
        if attn_metadata is None:
            # Profiling run (as FLASH_ATTN does).
            return output.fill_(0)
        if attn_metadata.plan is None:
            return self.fa_impl.forward(layer, query, key, value, kv_cache,
                                        attn_metadata.fa_metadata, output)
        n = attn_metadata.num_actual_tokens
        # (blocks, kv heads, block size, 2*D) -> two (blocks, block size, kv heads, D) views.
        key_cache, value_cache = kv_cache.transpose(1, 2).split(self.head_size, dim=-1)
        descales = {}
        if self.fp8:
            descales = dict(q_descale=layer._q_scale, k_descale=layer._k_scale,
                            v_descale=layer._v_scale)
        pod_attention(output[:n], query[:n], key_cache, value_cache, attn_metadata.block_table,
                      attn_metadata.plan, self.scale, logits_soft_cap=self.logits_soft_cap,
                      sliding_window=self.window, sinks=self.sinks, **descales)
        POD_STATS["fused_calls"] += 1
        return output

    def do_kv_cache_update(self, layer: torch.nn.Module, key: torch.Tensor, value: torch.Tensor,
                           kv_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
        key_cache, value_cache = kv_cache.transpose(1, 2).split(self.head_size, dim=-1)
        # slot_mapping is unpadded and sets how many tokens are written; padding slots are -1.
        reshape_and_cache_flash(key, value, key_cache, value_cache, slot_mapping,
                                    self.kv_cache_dtype, layer._k_scale, layer._v_scale)
