"""Batch planning for the fused POD kernel: plain Python/numpy, testable on a CPU.

A plan cuts a hybrid batch into work items, each a tile of query rows (tokens x query heads of one
KV head's GQA group) against a range of that request's keys:

* requests whose rows fit 16 (decodes, short extends) get *decode tiles* of 16 rows, whose warps
  split the keys; the rest get *prefill tiles* (64 rows, 128 with the Hopper tile) whose warps
  split the rows;
* when a kind has too few items to fill its share of the GPU, long key ranges are cut into
  KV-splits (bounded: about one prefill or two decode items per CTA slot) merged in-kernel by the
  last split;
* each queue is ordered longest first, and the plan says how many CTAs per SM prefer decode work.

The layout written here is read by csrc/pod/params.cuh (keep the two in step).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# Mirrors of csrc/pod/params.cuh.
PLAN_HEADER_INTS = 4
ITEM_INTS = 16
ITEM_FIELDS = ("req", "kv_head", "h0", "nh", "q_start", "n_tok", "q_pos0", "kv_start", "kv_end",
               "slot", "slot_base", "num_splits", "merge_id")
# The item's last ints: zero here, written by trace builds (csrc/pod/trace.cuh).
TRACE_FIELDS = ("trace_cta_sm", "trace_start", "trace_end")
assert len(ITEM_FIELDS) + len(TRACE_FIELDS) == ITEM_INTS
MAX_SM_IDS = 1024  # kMaxSmIds (csrc/pod/params.cuh): bound on the SM ids the kernel indexes by
COUNTER_MERGE_BASE = 4 + MAX_SM_IDS  # kCtrSmSlots + kMaxSmIds

DECODE_TILE_ROWS = 16
# Rows of the mma.sync prefill tile (4 warps x one m16 tile). The Hopper tile has 128 (64 at head
# dim 256) and tuning builds may differ, so the backend passes the device's value
# (ops.device_prefill_tile_rows).
DEFAULT_PREFILL_TILE_ROWS = 64
SPLIT_ALIGN = 64  # KV-split boundaries are multiples of every kernel key tile
MIN_SPLIT_KEYS = {"decode": 256, "prefill": 1024}
# A queue is KV-split only while it has fewer items than this many per CTA slot. Prefill pieces
# cost a partial tile of up to 128 rows written, re-read and merged, so prefill splits only to
# fill one wave; short decode items split down to two per slot.
SPLIT_ITEMS_PER_SLOT = {"decode": 2, "prefill": 1}

# Rough H100 rates of the two tile kinds, used only to pick the prefill:decode CTA mix per SM.
PREFILL_FLOPS_PER_S = 350e12
DECODE_BYTES_PER_S = 3.0e12


def _align_split(keys):
    """keys rounded up to a multiple of SPLIT_ALIGN (an int or an array)."""
    return -(-keys // SPLIT_ALIGN) * SPLIT_ALIGN


@dataclass
class PodPlan:
    """What the op needs for one batch. Tensors are views of the planner's persistent buffers,
    so a CUDA graph that captured one plan replays correctly with the next."""

    buffer: torch.Tensor      # int32 header + items, on the device
    counters: torch.Tensor    # int32 scheduler and merge counters (kept zero between launches)
    workspace: torch.Tensor   # float32 partial outputs + log-sum-exps of KV-splits
    num_prefill_items: int
    num_decode_items: int
    decode_slots_per_sm: int
    ctas_per_sm: int
    num_sms: int
    prefill_rows: int         # rows of the prefill items' tile (the kernel's must be at least this)
    items: np.ndarray         # [num_items, ITEM_INTS] host copy (prefill items first), for tests/logs


class PodPlanner:
    """Owns the persistent buffers of one attention layout and fills them once per batch."""

    def __init__(self, *, num_q_heads: int, num_kv_heads: int, head_dim: int, block_size: int,
                 num_sms: int, ctas_per_sm: int, max_num_reqs: int, max_num_tokens: int,
                 device: torch.device | str, prefill_rows: int | None = None,
                 split_items_per_slot: dict[str, int] | None = None, min_decode_slots: int = 1):
        """prefill_rows: rows of the built kernel's prefill tile (ops.device_prefill_tile_rows).
        split_items_per_slot: per kind, the KV-split target (SPLIT_ITEMS_PER_SLOT by default).
        min_decode_slots: CTAs per SM that start on decode work whenever a batch has both kinds
        (1: decodes always run beside prefill; 0: a small decode share may wait for the prefill
        tail, where it fills the CTAs that run out of prefill items)."""
        if num_kv_heads <= 0 or num_q_heads % num_kv_heads:
            raise ValueError(f"num_q_heads {num_q_heads} must be a multiple of num_kv_heads {num_kv_heads}")
        self.num_kv_heads = num_kv_heads
        self.group = num_q_heads // num_kv_heads
        self.head_dim = head_dim
        self.block_size = block_size
        self.num_sms = num_sms
        self.ctas_per_sm = ctas_per_sm
        self.device = torch.device(device)
        self.min_decode_slots = min_decode_slots

        self.prefill_rows = prefill_rows or DEFAULT_PREFILL_TILE_ROWS
        slots = num_sms * ctas_per_sm
        # Unsplit items: every request's tiles; the worst case has the most partial tiles.
        base = sum(
            (max_num_tokens // self._tokens_per_tile(rows) + max_num_reqs) * self._head_chunks(rows)
            for rows in (self.prefill_rows, DECODE_TILE_ROWS)) * num_kv_heads
        # Splitting happens only while a kind has fewer items than its target (at most 2 per slot),
        # so it adds at most that many pieces again.
        per_slot = {**SPLIT_ITEMS_PER_SLOT, **(split_items_per_slot or {})}
        self.split_targets = {kind: n * slots for kind, n in per_slot.items()}
        split_target = max(self.split_targets.values())
        self.max_items = base + 2 * split_target
        self.max_split_rows = 2 * split_target * self.prefill_rows
        self.max_merge_groups = split_target

        pin = self.device.type == "cuda"
        n_ints = PLAN_HEADER_INTS + self.max_items * ITEM_INTS
        self._host = [torch.zeros(n_ints, dtype=torch.int32, pin_memory=pin) for _ in range(2)]
        self._host_turn = 0
        self._copied = [None, None]  # events: the host buffer's last copy has finished
        self.buffer = torch.zeros(n_ints, dtype=torch.int32, device=self.device)
        self.counters = torch.zeros(COUNTER_MERGE_BASE + self.max_merge_groups, dtype=torch.int32,
                                    device=self.device)
        self.workspace = torch.empty(self.max_split_rows * (head_dim + 1), dtype=torch.float32,
                                     device=self.device)

    # -- tile geometry --------------------------------------------------------------------------
    def _heads_per_tile(self, rows: int) -> int:
        return min(self.group, rows)

    def _tokens_per_tile(self, rows: int) -> int:
        return rows // self._heads_per_tile(rows)

    def _head_chunks(self, rows: int) -> int:
        return -(-self.group // self._heads_per_tile(rows))

    def _tiles(self, reqs: np.ndarray, q_start: np.ndarray, q_len: np.ndarray, seq_len: np.ndarray,
               rows: int) -> np.ndarray:
        """Unsplit items of the given requests as an [n, ITEM_INTS] array (kv_start 0, slot -1)."""
        out = np.zeros((0, ITEM_INTS), dtype=np.int64)
        if len(reqs) == 0:
            return out
        tok = self._tokens_per_tile(rows)
        nh = self._heads_per_tile(rows)
        n_tiles = -(-q_len // tok)
        tile_req = np.repeat(np.arange(len(reqs)), n_tiles)
        first_tile = np.repeat(np.cumsum(n_tiles) - n_tiles, n_tiles)
        t0 = (np.arange(len(tile_req)) - first_tile) * tok
        n_tok = np.minimum(tok, q_len[tile_req] - t0)
        q_pos0 = seq_len[tile_req] - q_len[tile_req] + t0
        heads = [(kv, h0, min(nh, self.group - h0))
                 for kv in range(self.num_kv_heads) for h0 in range(0, self.group, nh)]
        items = np.zeros((len(tile_req) * len(heads), ITEM_INTS), dtype=np.int64)
        f = {name: i for i, name in enumerate(ITEM_FIELDS)}
        # Row order: tiles of one request are adjacent, its heads innermost.
        items[:, f["req"]] = np.repeat(reqs[tile_req], len(heads))
        items[:, f["kv_head"]] = np.tile([h[0] for h in heads], len(tile_req))
        items[:, f["h0"]] = np.tile([h[1] for h in heads], len(tile_req))
        items[:, f["nh"]] = np.tile([h[2] for h in heads], len(tile_req))
        items[:, f["q_start"]] = np.repeat(q_start[tile_req] + t0, len(heads))
        items[:, f["n_tok"]] = np.repeat(n_tok, len(heads))
        items[:, f["q_pos0"]] = np.repeat(q_pos0, len(heads))
        items[:, f["kv_end"]] = np.repeat(q_pos0 + n_tok, len(heads))
        items[:, f["slot"]] = -1
        items[:, f["num_splits"]] = 1
        return items

    @staticmethod
    def _split_count(items: np.ndarray, chunk: np.ndarray) -> np.ndarray:
        # Split boundaries s*chunk must not pass the tile's first position, so every row of the tile
        # sees at least one key in every split (no empty softmax rows to merge).
        kv_end = items[:, ITEM_FIELDS.index("kv_end")]
        q_pos0 = items[:, ITEM_FIELDS.index("q_pos0")]
        return np.maximum(1, np.minimum(-(-kv_end // chunk), 1 + q_pos0 // chunk))

    def _split_chunk(self, items: np.ndarray, kind: str) -> np.ndarray | None:
        """Keys per KV-split of each item of this queue, or None when it has enough items unsplit.

        Each item is cut into even pieces of about the queue's chunk: a short last piece would pay
        a whole partial write and merge for a few keys (a 12480-key tile cut at 12416 did)."""
        target = self.split_targets[kind]
        if len(items) == 0 or len(items) >= target:
            return None
        kv_end = items[:, ITEM_FIELDS.index("kv_end")]
        chunk = _align_split(max(MIN_SPLIT_KEYS[kind], -(-int(kv_end.sum()) // target)))
        pieces = np.maximum(1, (kv_end + chunk // 2) // chunk)
        return _align_split(-(-kv_end // pieces))

    @staticmethod
    def _expand_splits(items: np.ndarray, counts: np.ndarray, chunk: np.ndarray) -> np.ndarray:
        f = {name: i for i, name in enumerate(ITEM_FIELDS)}
        out = np.repeat(items, counts, axis=0)
        chunk = np.repeat(chunk, counts)
        s = np.arange(len(out)) - np.repeat(np.cumsum(counts) - counts, counts)
        n = np.repeat(counts, counts)
        out[:, f["kv_start"]] = s * chunk
        out[:, f["kv_end"]] = np.where(s == n - 1, out[:, f["kv_end"]], (s + 1) * chunk)
        out[:, f["num_splits"]] = n
        out[:, f["slot"]] = np.where(n > 1, s, -1)  # split index for now; rows assigned later
        return out

    # -- the plan ---------------------------------------------------------------------------------
    def plan(self, query_start_loc_cpu: torch.Tensor, seq_lens_cpu: torch.Tensor,
             num_decodes: int | None = None) -> PodPlan:
        """Builds the plan of one batch from host-side lengths and stages it on the device.

        query_start_loc_cpu: [num_reqs + 1]; seq_lens_cpu: [num_reqs] (context including this
        step's tokens). Requests of query length 0 (CUDA-graph padding) get no work. num_decodes,
        if given, is checked: the decode requests vLLM placed first must fit decode tiles.
        """
        qsl = query_start_loc_cpu.numpy().astype(np.int64)
        seq_len = seq_lens_cpu.numpy().astype(np.int64)
        q_len = qsl[1:] - qsl[:-1]
        if (q_len > seq_len).any() or (q_len < 0).any():
            raise ValueError("every request needs 0 <= query length <= seq_len")
        reqs = np.arange(len(q_len))
        decode_rows = np.minimum(self.group, DECODE_TILE_ROWS)
        is_decode_tile = (q_len > 0) & (q_len * decode_rows <= DECODE_TILE_ROWS)
        if num_decodes is not None and not is_decode_tile[:num_decodes][q_len[:num_decodes] > 0].all():
            raise ValueError("the first num_decodes requests must be decodes (query length 1)")
        is_prefill_tile = (q_len > 0) & ~is_decode_tile

        queues = {}
        for kind, sel, rows in (("prefill", is_prefill_tile, self.prefill_rows),
                                ("decode", is_decode_tile, DECODE_TILE_ROWS)):
            queues[kind] = self._tiles(reqs[sel], qsl[:-1][sel], q_len[sel], seq_len[sel], rows)

        queues = self._split(queues)
        prefill, decode = queues["prefill"], queues["decode"]
        items = np.concatenate([prefill, decode]).astype(np.int32)
        decode_slots = self._decode_slots_per_sm(prefill, decode)
        return self._stage(items, len(prefill), len(decode), decode_slots)

    def _split(self, queues: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """KV-splits for under-filled queues, longest items first, workspace rows and merge ids."""
        f = {name: i for i, name in enumerate(ITEM_FIELDS)}
        chunks = {kind: self._split_chunk(items, kind) for kind, items in queues.items()}
        while True:
            out, rows_used, groups = {}, 0, 0
            for kind, items in queues.items():
                chunk = chunks[kind]
                if chunk is not None:
                    items = self._expand_splits(items, self._split_count(items, chunk), chunk)
                split = items[:, f["num_splits"]] > 1
                first = split & (items[:, f["slot"]] == 0)
                rows = items[:, f["n_tok"]] * items[:, f["nh"]]
                # Splits of one group are adjacent: give each group consecutive workspace rows.
                group_rows = np.where(first, rows * items[:, f["num_splits"]], 0)
                base = rows_used + np.cumsum(group_rows) - group_rows
                group_base = np.maximum.accumulate(np.where(first, base, 0))
                gid = groups + np.cumsum(first) - 1
                items[:, f["slot_base"]] = np.where(split, group_base, 0)
                items[:, f["slot"]] = np.where(split, group_base + items[:, f["slot"]] * rows, -1)
                items[:, f["merge_id"]] = np.where(split, gid, 0)
                rows_used += int(group_rows.sum())
                groups += int(first.sum())
                # Longest first (LPT): the last items to start are the short ones.
                cost = (items[:, f["kv_end"]] - items[:, f["kv_start"]]) * rows
                out[kind] = items[np.argsort(-cost, kind="stable")]
            n_items = sum(len(v) for v in out.values())
            if rows_used <= self.max_split_rows and groups <= self.max_merge_groups \
                    and n_items <= self.max_items:
                return out
            if all(c is None for c in chunks.values()):
                raise ValueError(f"batch of {n_items} work items exceeds the planner's capacity "
                                 f"{self.max_items}; raise max_num_tokens/max_num_reqs")
            # Too many pieces for the persistent buffers: coarser splits, unsplit at the limit.
            chunks = {k: (None if c is None or c.min() >= 1 << 30 else 2 * c) for k, c in chunks.items()}

    def _decode_slots_per_sm(self, prefill: np.ndarray, decode: np.ndarray) -> int:
        if len(decode) == 0:
            return 0
        if len(prefill) == 0 or self.ctas_per_sm == 1:
            return self.ctas_per_sm
        f = {name: i for i, name in enumerate(ITEM_FIELDS)}
        keys = lambda it: it[:, f["kv_end"]] - it[:, f["kv_start"]]
        rows = prefill[:, f["n_tok"]] * prefill[:, f["nh"]]
        t_prefill = float((4 * rows * keys(prefill)).sum()) * self.head_dim / PREFILL_FLOPS_PER_S
        t_decode = float((4 * keys(decode)).sum()) * self.head_dim / DECODE_BYTES_PER_S
        share = t_decode / (t_prefill + t_decode)
        return int(min(self.ctas_per_sm - 1, max(self.min_decode_slots, round(share * self.ctas_per_sm))))

    def _stage(self, items: np.ndarray, n_prefill: int, n_decode: int, decode_slots: int) -> PodPlan:
        n = PLAN_HEADER_INTS + items.size
        turn = self._host_turn
        self._host_turn ^= 1
        if self._copied[turn] is not None:
            self._copied[turn].synchronize()  # that host buffer's previous copy has been consumed
        host = self._host[turn]
        host[:PLAN_HEADER_INTS] = torch.tensor([n_prefill, n_decode, decode_slots, 0], dtype=torch.int32)
        host[PLAN_HEADER_INTS:n] = torch.from_numpy(items.reshape(-1))
        if self.device.type == "cuda":
            self.buffer[:n].copy_(host[:n], non_blocking=True)
            self._copied[turn] = torch.cuda.Event()
            self._copied[turn].record()
        else:
            self.buffer[:n].copy_(host[:n])
        return PodPlan(buffer=self.buffer, counters=self.counters, workspace=self.workspace,
                       num_prefill_items=n_prefill, num_decode_items=n_decode,
                       decode_slots_per_sm=decode_slots, ctas_per_sm=self.ctas_per_sm,
                       num_sms=self.num_sms, prefill_rows=self.prefill_rows, items=items)
