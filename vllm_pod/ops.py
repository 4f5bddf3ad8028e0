"""The fused op's Python face: a thin call into the extension (vllm_pod._C)."""

from __future__ import annotations

import functools

import torch

from vllm_pod.plan import BUILD_HEAD_DIMS, PodPlan

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)
# fp8 KV caches (vLLM's --kv-cache-dtype names): e4m3 pages and, as FLASH_ATTN takes them, an e4m3
# query; compute capability 9.0 only (FLASH_ATTN's FA3 runs the single-phase batches).
FP8_KV_CACHE_DTYPES = ("fp8", "fp8_e4m3")
SUPPORTED_HEAD_SIZES = tuple(BUILD_HEAD_DIMS)
SUPPORTED_BLOCK_SIZES = (16, 32, 64)
# Builds the extension from a source checkout (nvcc from CUDA_HOME; vLLM's torch, hence no isolation).
BUILD_COMMAND = "CUDA_HOME=/usr/local/cuda pip install --no-build-isolation -e ."


@functools.cache
def _load_extension() -> None:
    import vllm_pod._C  # noqa: F401  (registers torch.ops.vllm_pod.*)


def extension_load_error() -> str | None:
    """Why the compiled extension does not load in this process (not built, or built against
    another torch), or None when it loads."""
    try:
        _load_extension()
    except (ImportError, OSError) as e:
        return f"{type(e).__name__}: {e}"
    return None


def kernel_dtype(cache_dtype: torch.dtype) -> torch.dtype:
    """The dtype the extension is dispatched on for a KV cache of cache_dtype: vLLM keeps fp8
    caches as uint8 (0.26) or float8_e4m3fn."""
    return torch.float8_e4m3fn if cache_dtype == torch.uint8 else cache_dtype


def pod_attention(out: torch.Tensor, query: torch.Tensor, key_cache: torch.Tensor,
                  value_cache: torch.Tensor, block_table: torch.Tensor, plan: PodPlan,
                  softmax_scale: float, *, logits_soft_cap: float | None = None,
                  sliding_window: int | None = None, sinks: torch.Tensor | None = None,
                  q_descale: torch.Tensor | None = None, k_descale: torch.Tensor | None = None,
                  v_descale: torch.Tensor | None = None) -> None:
    """Attention of a whole hybrid batch in one launch, written into `out` in place.

    query/out: [num_tokens, num_q_heads, head_dim]; key_cache/value_cache: [num_blocks, block_size,
    num_kv_heads, head_dim] views with any strides (head dim contiguous); block_table:
    [num_reqs, max_blocks] int32; plan: from PodPlanner.plan for this batch. The options follow
    vLLM's FLASH_ATTN (see vllm_pod.reference): logits_soft_cap, sliding_window (the layer's; a
    plan made for a window only holds the keys inside it, so it must be this one) and sinks
    ([num_q_heads] logits). An fp8 (e4m3) KV cache takes an e4m3 query and float32 descales,
    one per tensor or per KV head, as vLLM's layers hold them (_q_scale, _k_scale, _v_scale):
    scores are q_descale * k_descale times the stored ones, outputs v_descale times; out is the
    model's float16/bfloat16.
    """
    if plan.sliding_window is not None and plan.sliding_window != sliding_window:
        raise ValueError(f"the plan was made for sliding window {plan.sliding_window}, the layer "
                         f"attends with {sliding_window}")
    _load_extension()
    if key_cache.dtype == torch.uint8:
        key_cache = key_cache.view(torch.float8_e4m3fn)
        value_cache = value_cache.view(torch.float8_e4m3fn)
    torch.ops.vllm_pod.pod_attention(out, query, key_cache, value_cache, block_table, plan.buffer,
                                     plan.counters, plan.workspace, softmax_scale,
                                     logits_soft_cap or 0.0, sliding_window or 0, sinks,
                                     q_descale, k_descale, v_descale, plan.ctas_per_sm,
                                     plan.num_sms, plan.prefill_rows)


@functools.cache
def device_prefill_tile_rows(dtype: torch.dtype, head_dim: int) -> int:
    """Query rows of the built kernel's prefill tile (what PodPlanner must plan for) for a KV
    cache of `dtype`."""
    _load_extension()
    return int(torch.ops.vllm_pod.prefill_tile_rows(kernel_dtype(dtype), head_dim))


@functools.cache
def device_ctas_per_sm(dtype: torch.dtype, head_dim: int) -> int:
    """CTAs of the fused kernel for a KV cache of `dtype` that fit on one SM of the current GPU."""
    _load_extension()
    return int(torch.ops.vllm_pod.ctas_per_sm(kernel_dtype(dtype), head_dim))
