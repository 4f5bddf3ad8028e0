"""Random hybrid batches in vLLM's own layouts, and planners for them on the current GPU, shared by
the tests and the kernel benchmarks."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vllm_pod.plan import PodPlan, PodPlanner
from vllm_pod.reference import broadcast_descale

# How the paged K/V cache is laid out in memory (vLLM 0.26 packs K and V per head: [..., 2*D]).
KV_LAYOUTS = ("nhd_packed", "hnd_packed", "separate")


@dataclass
class Batch:
    query: torch.Tensor          # [num_tokens, Hq, D], decodes first
    key_cache: torch.Tensor      # [num_blocks, block_size, Hkv, D] (a strided view)
    value_cache: torch.Tensor
    block_table: torch.Tensor    # [num_reqs, max_blocks] int32
    query_start_loc: torch.Tensor  # [num_reqs + 1] int32
    seq_lens: torch.Tensor       # [num_reqs] int32
    num_decodes: int
    scale: float
    # An fp8 batch (quantize_fp8): the model's dtype, which out takes, and the (q, k, v) descales.
    out_dtype: torch.dtype | None = None
    descales: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def out_like(self) -> torch.Tensor:
        """An output for the batch, poisoned with NaN."""
        return torch.full(self.query.shape, float("nan"), dtype=self.out_dtype or self.query.dtype,
                          device=self.query.device)

    def fp8_options(self) -> dict:
        """The op's descale keywords (none unless fp8)."""
        if self.descales is None:
            return {}
        return dict(zip(("q_descale", "k_descale", "v_descale"), self.descales))


def kv_cache_views(num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int,
                   dtype: torch.dtype, device, layout: str, gen: torch.Generator):
    """Random K and V caches as the strided views a vLLM backend receives (gen on `device`)."""
    shape = {"nhd_packed": (num_blocks, block_size, num_kv_heads, 2 * head_dim),
             "hnd_packed": (num_blocks, num_kv_heads, block_size, 2 * head_dim),
             "separate": (2, num_blocks, block_size, num_kv_heads, head_dim)}[layout]
    kv = torch.randn(shape, generator=gen, dtype=dtype, device=device)
    if layout == "nhd_packed":
        return kv.split(head_dim, dim=-1)
    if layout == "hnd_packed":
        return kv.transpose(1, 2).split(head_dim, dim=-1)
    return kv.unbind(0)


def make_batch(decode_lens: list[int], prefills: list[tuple[int, int]], *, num_q_heads: int,
               num_kv_heads: int, head_dim: int, block_size: int, dtype: torch.dtype,
               device="cpu", layout: str = "nhd_packed", seed: int = 0,
               spare_blocks: int = 3) -> Batch:
    """decode_lens: seq_len of each decode (query length 1); prefills: (chunk, seq_len) pairs.

    Blocks of all requests are placed at random among the cache's blocks. Values are drawn on
    `device` (GB-sized caches for benchmarks would be slow to make on the host).
    """
    gen = torch.Generator().manual_seed(seed)
    dev_gen = torch.Generator(device=device).manual_seed(seed)
    q_lens = [1] * len(decode_lens) + [q for q, _ in prefills]
    seq_lens = list(decode_lens) + [s for _, s in prefills]
    if any(q > s or q < 0 for q, s in zip(q_lens, seq_lens)):
        raise ValueError("each request needs 0 <= chunk <= seq_len")
    blocks_per_req = [-(-s // block_size) for s in seq_lens]
    max_blocks = max(blocks_per_req, default=1) or 1
    num_blocks = sum(blocks_per_req) + spare_blocks
    perm = torch.randperm(num_blocks, generator=gen)
    block_table = torch.zeros(len(seq_lens), max_blocks, dtype=torch.int32)
    used = 0
    for r, n in enumerate(blocks_per_req):
        block_table[r, :n] = perm[used:used + n]
        used += n
    key_cache, value_cache = kv_cache_views(num_blocks, block_size, num_kv_heads, head_dim, dtype,
                                            device, layout, dev_gen)
    qsl = torch.zeros(len(q_lens) + 1, dtype=torch.int32)
    qsl[1:] = torch.tensor(q_lens, dtype=torch.int32).cumsum(0)
    query = torch.randn(int(qsl[-1]), num_q_heads, head_dim, generator=dev_gen, dtype=dtype, device=device)
    return Batch(query=query, key_cache=key_cache, value_cache=value_cache,
                 block_table=block_table.to(device), query_start_loc=qsl.to(device),
                 seq_lens=torch.tensor(seq_lens, dtype=torch.int32).to(device),
                 num_decodes=len(decode_lens), scale=head_dim ** -0.5)


def quantize_fp8(b: Batch, *, per_head: bool, seed: int = 0) -> Batch:
    """b with its query and caches in e4m3 as vLLM stores them (value / descale, saturated), with
    random descales near each tensor's absmax / 448, one per tensor or per KV head."""
    gen = torch.Generator(device=b.query.device).manual_seed(seed)
    num_kv_heads = b.key_cache.shape[2]
    fp8 = torch.float8_e4m3fn
    limit = torch.finfo(fp8).max

    def quantize(x: torch.Tensor, heads_dim: int, group: int):
        n = num_kv_heads if per_head else 1
        descale = (x.float().abs().amax() / limit) * (0.5 + torch.rand(n, generator=gen, device=x.device))
        scale = broadcast_descale(descale, x, heads_dim, num_kv_heads, group)
        return (x.float() / scale).clamp(-limit, limit).to(fp8), descale.contiguous()

    group = b.query.shape[1] // num_kv_heads
    query, q_descale = quantize(b.query, 1, group)
    key_cache, k_descale = quantize(b.key_cache, 2, 1)
    value_cache, v_descale = quantize(b.value_cache, 2, 1)
    return Batch(query=query, key_cache=key_cache, value_cache=value_cache, block_table=b.block_table,
                 query_start_loc=b.query_start_loc, seq_lens=b.seq_lens, num_decodes=b.num_decodes,
                 scale=b.scale, out_dtype=b.query.dtype, descales=(q_descale, k_descale, v_descale))


def sub_batch(b: Batch, reqs: slice) -> Batch:
    """Requests reqs (a contiguous range) of b as a batch of their own, sharing b's caches."""
    qsl = b.query_start_loc
    lo, hi = int(qsl[reqs.start]), int(qsl[reqs.stop])
    return Batch(query=b.query[lo:hi], key_cache=b.key_cache, value_cache=b.value_cache,
                 block_table=b.block_table[reqs], query_start_loc=(qsl[reqs.start:reqs.stop + 1] - lo).contiguous(),
                 seq_lens=b.seq_lens[reqs].contiguous(),
                 num_decodes=max(0, min(b.num_decodes, reqs.stop) - reqs.start), scale=b.scale,
                 out_dtype=b.out_dtype, descales=b.descales)


def batch_shape(b: Batch) -> dict:
    """The shape keywords device_planner takes for b (dtype: the KV cache's)."""
    return dict(num_q_heads=b.query.shape[1], num_kv_heads=b.key_cache.shape[2],
                head_dim=b.query.shape[2], block_size=b.key_cache.shape[1], dtype=b.key_cache.dtype)


def device_planner(*, num_q_heads: int, num_kv_heads: int, head_dim: int, block_size: int,
                   dtype: torch.dtype, max_num_reqs: int, max_num_tokens: int, **options) -> PodPlanner:
    """A planner on the current GPU as the backend makes one: the GPU's SM count and the built
    kernel's CTAs per SM and prefill tile height (options, e.g. prefill_rows, override them)."""
    from vllm_pod.ops import device_ctas_per_sm, device_prefill_tile_rows
    settings = dict(num_sms=torch.cuda.get_device_properties(0).multi_processor_count,
                    ctas_per_sm=device_ctas_per_sm(dtype, head_dim),
                    prefill_rows=device_prefill_tile_rows(dtype, head_dim)) | options
    return PodPlanner(num_q_heads=num_q_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                      block_size=block_size, max_num_reqs=max_num_reqs, max_num_tokens=max_num_tokens,
                      device="cuda", **settings)


def plan_batch(planner: PodPlanner, b: Batch) -> PodPlan:
    """The plan of batch b, from host copies of its lengths, as the backend plans."""
    return planner.plan(b.query_start_loc.cpu(), b.seq_lens.cpu(), num_decodes=b.num_decodes)
