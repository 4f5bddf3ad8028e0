"""Float32 reference for the op's semantics (CPU or GPU), used by the tests and benchmarks.

A request's q query tokens are the last q of its seq_len positions: token i sits at position
seq_len - q + i and attends to every key position <= its own (a decode: q = 1, the whole sequence).
The optional features follow vLLM's FLASH_ATTN backend:

- sliding_window W: a token sees only the last W positions, its own included (keys > pos - W);
- logits_soft_cap c: scaled scores s become c * tanh(s / c) before the softmax;
- sinks: one logit per query head (natural log units) that joins every row's softmax
  denominator without a value: rows are scaled by sum / (sum + exp(sink));
- descales (q, k, v) of an fp8 cache and query, each one float or one per KV head: the stored
  values times their descale are the ones attended with.
"""

from __future__ import annotations

import torch


def gather_kv(cache: torch.Tensor, block_table_row: torch.Tensor, seq_len: int) -> torch.Tensor:
    """The first seq_len tokens of one request from a paged cache: [seq_len, num_kv_heads, D]."""
    block_size = cache.shape[1]
    blocks = block_table_row[: -(-seq_len // block_size)].long()
    return cache[blocks].reshape(-1, *cache.shape[2:])[:seq_len]


def broadcast_descale(scale: torch.Tensor, x: torch.Tensor, heads_dim: int, num_kv_heads: int,
                      heads_per_kv_head: int) -> torch.Tensor:
    """A descale (one float, or one per KV head) shaped to multiply x, whose dimension heads_dim
    holds heads, heads_per_kv_head consecutive ones per KV head (the GQA group for a query)."""
    shape = [1] * x.dim()
    shape[heads_dim] = -1
    scale = scale.float().to(x.device).expand(num_kv_heads).repeat_interleave(heads_per_kv_head)
    return scale.view(shape)


def reference_attention(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                        block_table: torch.Tensor, query_start_loc: torch.Tensor,
                        seq_lens: torch.Tensor, softmax_scale: float, *,
                        sliding_window: int | None = None, logits_soft_cap: float | None = None,
                        sinks: torch.Tensor | None = None,
                        descales: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
    """Returns float32 [num_tokens, num_q_heads, D]; rows of no request stay NaN."""
    out = torch.full(query.shape, float("nan"), dtype=torch.float32, device=query.device)
    num_kv_heads = key_cache.shape[2]
    group = query.shape[1] // num_kv_heads
    if descales is not None:
        query = query.float() * broadcast_descale(descales[0], query, 1, num_kv_heads, group)
        key_cache = key_cache.float() * broadcast_descale(descales[1], key_cache, 2, num_kv_heads, 1)
        value_cache = value_cache.float() * broadcast_descale(descales[2], value_cache, 2, num_kv_heads, 1)
    qsl, lens = query_start_loc.tolist(), seq_lens.tolist()
    for r, seq_len in enumerate(lens):
        q0, q1 = qsl[r], qsl[r + 1]
        if q1 == q0:
            continue
        q = query[q0:q1].float()                                                    # [q, Hq, D]
        k = gather_kv(key_cache, block_table[r], seq_len).float().repeat_interleave(group, 1)
        v = gather_kv(value_cache, block_table[r], seq_len).float().repeat_interleave(group, 1)
        scores = torch.einsum("qhd,khd->hqk", q, k) * softmax_scale
        if logits_soft_cap:
            scores = logits_soft_cap * torch.tanh(scores / logits_soft_cap)
        pos = torch.arange(seq_len - (q1 - q0), seq_len, device=q.device)
        key = torch.arange(seq_len, device=q.device)[None, :]
        visible = key <= pos[:, None]
        if sliding_window is not None:
            visible &= key > pos[:, None] - sliding_window
        scores = scores.masked_fill(~visible, float("-inf"))
        if sinks is None:
            probs = scores.softmax(-1)
        else:
            # The sink as one more column, dropped after the softmax.
            sink = sinks.float().to(q.device)[:, None, None].expand(-1, q1 - q0, 1)
            probs = torch.cat([scores, sink], -1).softmax(-1)[..., :-1]
        out[q0:q1] = torch.einsum("hqk,khd->qhd", probs, v)
    return out
