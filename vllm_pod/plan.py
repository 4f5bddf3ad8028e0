"""Batch planning for the fused POD kernel: plain Python/numpy, testable on a CPU.

A plan cuts a hybrid batch into work items, each a tile of query rows (tokens x query heads of one
KV head's GQA group) against a range of that request's keys:

* requests whose rows fit 16 (decodes, short extends) get *decode tiles* of 16 rows, whose warps
  split the keys; the rest get *prefill tiles* (64 rows, 128 with the Hopper tile) whose warps
  split the rows;
* when a kind has too few items to fill its share of the GPU, long key ranges are cut into
  KV-splits (bounded: about one prefill or two decode items per CTA slot) merged in-kernel by the
  last split;
* each queue is ordered longest first, and the plan says how many CTAs per SM prefer decode work;
* optionally (cost_splits), items whose estimated time exceeds the batch's makespan target are cut
  further.

The layout written here is read by csrc/pod/params.cuh (keep the two in step).

Planning runs on the host once per step, so it is written for host time: the work is computed per
tile (a request's rows) and per KV-split piece, and expanded over the KV heads only when the items
are written, straight into a pinned host buffer that one asynchronous copy sends to the device.
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

# The kernel's per-CTA rates, traced on an H100 with two CTAs per SM (benchmarks/NOTES.md, session
# 7: each kind runs at the same rate beside the other kind as alone). They set the prefill:decode
# CTA mix and, with cost_splits, each item's estimated time.
PREFILL_FLOPS_PER_CTA_S = 2.0e12  # attention FLOPs (4 x rows x keys x head_dim) per second
DECODE_BYTES_PER_CTA_S = 20e9     # K/V bytes (4 x keys x head_dim: fp16/bf16 K and V) per second
ITEM_SECONDS = 8e-6               # an item's fixed cost (claim, prologue, epilogue; trace fit)
MERGE_SECONDS = 30e-6             # what the piece that ends a KV-split group adds by merging it

_F = {name: i for i, name in enumerate(ITEM_FIELDS)}


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

    @property
    def items(self) -> np.ndarray:
        """[num_items, ITEM_INTS] as the kernel reads them (prefill items first), read back from
        the device buffer (a sync: for tests and logs), so valid until the planner's next plan."""
        n = self.num_prefill_items + self.num_decode_items
        items = self.buffer[PLAN_HEADER_INTS:PLAN_HEADER_INTS + n * ITEM_INTS]
        return items.to("cpu", copy=True).numpy().reshape(n, ITEM_INTS)


@dataclass(frozen=True)
class _Queue:
    """One tile kind's geometry: its items are every tile of its requests times every head chunk
    (a KV head's GQA group cut to the tile's rows)."""

    kind: str
    rows: int               # query rows of the tile
    tokens: int             # tokens per tile
    nh: np.ndarray          # [H] query heads of each head chunk, in item order
    nh_first: np.ndarray    # [H] query heads of the chunks before it (its rows' offset in a group)
    head_rows: np.ndarray   # [H * ITEM_INTS] int32: each chunk's kv_head, h0, nh in place, else 0


# Item fields that come from the tile, in _Tiles.table's column order.
_TILE_FIELDS = [_F[name] for name in ("req", "q_start", "n_tok", "q_pos0", "kv_end")]
# An unsplit piece before its tile's fields are filled in.
_PIECE_ROW = np.zeros(ITEM_INTS, dtype=np.int32)
_PIECE_ROW[[_F["slot"], _F["num_splits"]]] = (-1, 1)


@dataclass
class _Tiles:
    """Per tile of one queue (request order, then token order): req, q_start, n_tok, q_pos0 and
    kv_end (= q_pos0 + n_tok) as int64 columns."""

    table: np.ndarray

    @property
    def n_tok(self) -> np.ndarray:
        return self.table[:, 2]

    @property
    def q_pos0(self) -> np.ndarray:
        return self.table[:, 3]

    @property
    def kv_end(self) -> np.ndarray:
        return self.table[:, 4]


class PodPlanner:
    """Owns the persistent buffers of one attention layout and fills them once per batch."""

    def __init__(self, *, num_q_heads: int, num_kv_heads: int, head_dim: int, block_size: int,
                 num_sms: int, ctas_per_sm: int, max_num_reqs: int, max_num_tokens: int,
                 device: torch.device | str, prefill_rows: int | None = None,
                 split_items_per_slot: dict[str, int] | None = None, min_decode_slots: int = 1,
                 cost_splits: bool = False):
        """prefill_rows: rows of the built kernel's prefill tile (ops.device_prefill_tile_rows).
        split_items_per_slot: per kind, the KV-split target (SPLIT_ITEMS_PER_SLOT by default).
        min_decode_slots: CTAs per SM that start on decode work whenever a batch has both kinds
        (1: decodes always run beside prefill; 0: a small decode share may wait for the prefill
        tail, where it fills the CTAs that run out of prefill items).
        cost_splits: also cut every item whose estimated time exceeds the batch's makespan target
        (see _cost_chunks)."""
        if num_kv_heads <= 0 or num_q_heads % num_kv_heads:
            raise ValueError(f"num_q_heads {num_q_heads} must be a multiple of num_kv_heads {num_kv_heads}")
        self.num_q_heads = num_q_heads
        self.num_kv_heads = num_kv_heads
        self.group = num_q_heads // num_kv_heads
        self.head_dim = head_dim
        self.block_size = block_size
        self.num_sms = num_sms
        self.ctas_per_sm = ctas_per_sm
        self.device = torch.device(device)
        self.min_decode_slots = min_decode_slots
        self.cost_splits = bool(cost_splits)

        self.prefill_rows = prefill_rows or DEFAULT_PREFILL_TILE_ROWS
        self._queues = {kind: self._queue(kind, rows) for kind, rows in
                        (("prefill", self.prefill_rows), ("decode", DECODE_TILE_ROWS))}
        slots = num_sms * ctas_per_sm
        # Unsplit items: every request's tiles; the worst case has the most partial tiles.
        base = sum((max_num_tokens // q.tokens + max_num_reqs) * len(q.nh)
                   for q in self._queues.values())
        # Splitting happens only while a kind has fewer items than its target (at most 2 per slot),
        # so it adds at most that many pieces again. Cost splits cut only items over the makespan
        # target, fewer than one per CTA slot (per role with one CTA per SM): room for two pieces
        # each; beyond these buffers all splits coarsen (_fit_capacity).
        per_slot = {**SPLIT_ITEMS_PER_SLOT, **(split_items_per_slot or {})}
        self.split_targets = {kind: n * slots for kind, n in per_slot.items()}
        split_target = max(self.split_targets.values())
        if self.cost_splits:
            split_target += num_sms * max(ctas_per_sm, 2)
        self.max_items = base + 2 * split_target
        self.max_split_rows = 2 * split_target * self.prefill_rows
        self.max_merge_groups = split_target

        n_ints = PLAN_HEADER_INTS + self.max_items * ITEM_INTS
        # Two pinned host buffers, used in turn: one may still be copying while the next plan is
        # written into the other. Items needing a reorder are laid out in _scratch first.
        cuda = self.device.type == "cuda"
        self._host = [torch.zeros(n_ints, dtype=torch.int32, pin_memory=cuda) for _ in range(2)]
        self._host_np = [h.numpy() for h in self._host]
        self._copied = [torch.cuda.Event() for _ in range(2)] if cuda else None
        self._turn = 0
        self._scratch = np.zeros(self.max_items * ITEM_INTS, dtype=np.int32)
        self.buffer = torch.zeros(n_ints, dtype=torch.int32, device=self.device)
        self.counters = torch.zeros(COUNTER_MERGE_BASE + self.max_merge_groups, dtype=torch.int32,
                                    device=self.device)
        self.workspace = torch.empty(self.max_split_rows * (head_dim + 1), dtype=torch.float32,
                                     device=self.device)

    def _queue(self, kind: str, rows: int) -> _Queue:
        nh_max = min(self.group, rows)
        h0 = np.arange(0, self.group, nh_max)
        nh = np.tile(np.minimum(nh_max, self.group - h0), self.num_kv_heads)
        heads = np.zeros((len(nh), ITEM_INTS), dtype=np.int32)
        heads[:, _F["kv_head"]] = np.repeat(np.arange(self.num_kv_heads), len(h0))
        heads[:, _F["h0"]] = np.tile(h0, self.num_kv_heads)
        heads[:, _F["nh"]] = nh
        return _Queue(kind=kind, rows=rows, tokens=rows // nh_max, nh=nh,
                      nh_first=np.cumsum(nh) - nh, head_rows=heads.reshape(-1))

    # -- cost model -------------------------------------------------------------------------------
    def _work_seconds(self, q: _Queue, t: _Tiles) -> float:
        """CTA-seconds of the queue's attention work, split or not (the pieces of a tile together
        cover its keys once)."""
        if q.kind == "prefill":
            flops = 4 * self.num_q_heads * int(np.dot(t.n_tok, t.kv_end))
            return float(flops) * self.head_dim / PREFILL_FLOPS_PER_CTA_S
        return float(4 * len(q.nh) * int(t.kv_end.sum())) * self.head_dim / DECODE_BYTES_PER_CTA_S

    def _key_seconds(self, q: _Queue, t: _Tiles):
        """Seconds one key adds to an item of each tile (its widest head chunk)."""
        if q.kind == "prefill":
            return 4 * t.n_tok * int(q.nh.max()) * self.head_dim / PREFILL_FLOPS_PER_CTA_S
        return 4 * self.head_dim / DECODE_BYTES_PER_CTA_S

    def makespan_target(self, prefill_seconds: float, decode_seconds: float) -> float:
        """The time no schedule of the batch beats, from each kind's estimated CTA-seconds.

        With two or more CTAs per SM every CTA takes items of either kind once its own kind runs
        out, so it is the total over all CTA slots. With one CTA per SM the kernel runs a prefill
        and a decode role side by side, each on its own queue, so the batch lasts at least the
        larger kind's total over the SMs."""
        if self.ctas_per_sm == 1:
            return max(prefill_seconds, decode_seconds) / self.num_sms
        return (prefill_seconds + decode_seconds) / (self.num_sms * self.ctas_per_sm)

    def _estimate(self, q: _Queue, t: _Tiles, counts: np.ndarray | None) -> float:
        """Estimated CTA-seconds of the queue's items: work, each item's fixed cost, each merge."""
        heads = len(q.nh)
        n_items = heads * (len(t.kv_end) if counts is None else int(counts.sum()))
        n_groups = 0 if counts is None else heads * int((counts > 1).sum())
        return ITEM_SECONDS * n_items + MERGE_SECONDS * n_groups + self._work_seconds(q, t)

    # -- tiles and splits -------------------------------------------------------------------------
    @staticmethod
    def _tiles(q: _Queue, reqs: np.ndarray, q_start: np.ndarray, q_len: np.ndarray,
               seq_len: np.ndarray) -> _Tiles:
        t0, n_tok = 0, q_len
        if len(reqs) and q_len.max() > q.tokens:
            n_tiles = -(-q_len // q.tokens)
            idx = np.repeat(np.arange(len(reqs)), n_tiles)
            t0 = (np.arange(len(idx)) - (np.cumsum(n_tiles) - n_tiles)[idx]) * q.tokens
            reqs, q_start, q_len, seq_len = reqs[idx], q_start[idx] + t0, q_len[idx], seq_len[idx]
            n_tok = np.minimum(q.tokens, q_len - t0)
        q_pos0 = seq_len - q_len + t0
        return _Tiles(np.stack([reqs, q_start, n_tok, q_pos0, q_pos0 + n_tok], axis=1))

    def _count_chunk(self, q: _Queue, t: _Tiles) -> np.ndarray | None:
        """Keys per KV-split of each tile, or None when the queue has enough items unsplit.

        Each tile is cut into even pieces of about the queue's chunk: a short last piece would pay
        a whole partial write and merge for a few keys (a 12480-key tile cut at 12416 did)."""
        target = self.split_targets[q.kind]
        n_items = len(t.kv_end) * len(q.nh)
        if n_items == 0 or n_items >= target:
            return None
        total = int(t.kv_end.sum()) * len(q.nh)
        chunk = _align_split(max(MIN_SPLIT_KEYS[q.kind], -(-total // target)))
        pieces = np.maximum(1, (t.kv_end + chunk // 2) // chunk)
        return _align_split(-(-t.kv_end // pieces))

    @staticmethod
    def _split_count(t: _Tiles, chunk: np.ndarray) -> np.ndarray:
        # Split boundaries s*chunk must not pass the tile's first position, so every row of the tile
        # sees at least one key in every split (no empty softmax rows to merge).
        return np.maximum(1, np.minimum(-(-t.kv_end // chunk), 1 + t.q_pos0 // chunk))

    def _cost_chunks(self, tiles: dict[str, _Tiles], chunks: dict) -> dict:
        """Tightens the chunks so that no item's estimated time exceeds the makespan target.

        The target comes from the plan of the item-count rule; further cuts only add fixed costs,
        so it stays a lower bound of the final plan's and the order of the cuts does not matter.
        A tile over it is cut into even pieces of at most `cap` keys, the most whose piece (fixed
        cost and merge included, and the up to n_tok - 1 keys more that a last piece may get when
        the causal rule stops the cuts early) fits the target. A tile for which not even a
        SPLIT_ALIGN-key piece would fit is left as it is."""
        counts = {k: None if c is None else self._split_count(tiles[k], c) for k, c in chunks.items()}
        target = self.makespan_target(*(self._estimate(self._queues[k], tiles[k], counts[k])
                                        for k in ("prefill", "decode")))
        out = dict(chunks)
        for kind, t in tiles.items():
            key_s = self._key_seconds(self._queues[kind], t)
            chunk, n = chunks[kind], counts[kind]
            fits = np.floor((target - ITEM_SECONDS - MERGE_SECONDS) / key_s).astype(np.int64)
            cap = (fits - (t.n_tok - 1)) // SPLIT_ALIGN * SPLIT_ALIGN
            over = ITEM_SECONDS + t.kv_end * key_s > target
            if chunk is not None:
                over = np.where(n > 1, chunk > cap, over)
            over &= cap >= SPLIT_ALIGN
            if over.any():
                new = (t.kv_end if chunk is None else chunk).copy()
                pieces = -(-t.kv_end[over] // cap[over])
                new[over] = _align_split(-(-t.kv_end[over] // pieces))
                out[kind] = new
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
        is_decode_tile = (q_len > 0) & (q_len <= self._queues["decode"].tokens)
        if num_decodes is not None and not is_decode_tile[:num_decodes][q_len[:num_decodes] > 0].all():
            raise ValueError("the first num_decodes requests must be decodes (query length 1)")
        is_prefill_tile = (q_len > 0) & ~is_decode_tile

        tiles = {}
        for kind, sel in (("prefill", is_prefill_tile), ("decode", is_decode_tile)):
            reqs = np.flatnonzero(sel)
            tiles[kind] = self._tiles(self._queues[kind], reqs, qsl[reqs], q_len[reqs], seq_len[reqs])
        chunks = {kind: self._count_chunk(self._queues[kind], t) for kind, t in tiles.items()}
        if self.cost_splits:
            chunks = self._cost_chunks(tiles, chunks)
        counts = self._fit_capacity(tiles, chunks)

        turn = self._turn
        self._turn ^= 1
        if self._copied is not None:
            self._copied[turn].synchronize()  # that host buffer's previous copy has been consumed
        host = self._host_np[turn]
        n_items, rows_used, groups = [], 0, 0
        for kind, t in tiles.items():
            first = PLAN_HEADER_INTS + sum(n_items) * ITEM_INTS
            n, rows, grps = self._write(self._queues[kind], t, chunks[kind], counts[kind], host[first:],
                                        rows_used, groups)
            n_items.append(n)
            rows_used += rows
            groups += grps
        n_prefill, n_decode = n_items
        decode_slots = self._decode_slots_per_sm(n_prefill, n_decode, tiles)
        host[:3] = (n_prefill, n_decode, decode_slots)
        n = PLAN_HEADER_INTS + (n_prefill + n_decode) * ITEM_INTS
        if self._copied is not None:
            self.buffer[:n].copy_(self._host[turn][:n], non_blocking=True)
            self._copied[turn].record()
        else:
            # numpy, not torch: torch splits a large CPU copy over threads, slow on a busy host.
            self.buffer.numpy()[:n] = host[:n]
        return PodPlan(buffer=self.buffer, counters=self.counters, workspace=self.workspace,
                       num_prefill_items=n_prefill, num_decode_items=n_decode,
                       decode_slots_per_sm=decode_slots, ctas_per_sm=self.ctas_per_sm,
                       num_sms=self.num_sms, prefill_rows=self.prefill_rows)

    def _fit_capacity(self, tiles: dict[str, _Tiles], chunks: dict) -> dict:
        """Split counts per tile (None: unsplit queue) that fit the persistent buffers: coarser
        splits while they do not, unsplit at the limit. Updates chunks in place."""
        while True:
            counts, n_items, rows_used, groups = {}, 0, 0, 0
            for kind, t in tiles.items():
                heads = len(self._queues[kind].nh)
                if chunks[kind] is None:
                    counts[kind] = None
                    n_items += heads * len(t.kv_end)
                    continue
                c = counts[kind] = self._split_count(t, chunks[kind])
                split = c > 1
                n_items += heads * int(c.sum())
                groups += heads * int(split.sum())
                rows_used += self.num_q_heads * int(np.dot(t.n_tok[split], c[split]))
            if rows_used <= self.max_split_rows and groups <= self.max_merge_groups \
                    and n_items <= self.max_items:
                return counts
            if all(c is None for c in chunks.values()):
                raise ValueError(f"batch of {n_items} work items exceeds the planner's capacity "
                                 f"{self.max_items}; raise max_num_tokens/max_num_reqs")
            for kind, c in chunks.items():
                chunks[kind] = None if c is None or c.min() >= 1 << 30 else 2 * c

    def _write(self, q: _Queue, t: _Tiles, chunk: np.ndarray | None, counts: np.ndarray | None,
               dst: np.ndarray, rows_used: int, groups: int) -> tuple[int, int, int]:
        """Writes the queue's items into dst (flat int32) longest first and returns (items,
        workspace rows, merge groups) used. rows_used/groups: those taken by earlier queues.

        The order is that of a stable sort by cost of the items listed tile by tile, head chunk
        by head chunk, split by split. It is built per piece (a tile's split) with the head chunks
        innermost, which is that order whenever all chunks have the same heads and no two pieces
        of one tile cost the same; otherwise the items are reordered once more."""
        heads = len(q.nh)
        num_tiles = len(t.table)
        split = counts is not None and bool((counts > 1).any())
        if split:
            tile = np.repeat(np.arange(num_tiles), counts)
            first_piece = np.cumsum(counts) - counts
            s = np.arange(len(tile)) - first_piece[tile]
            n = counts[tile]
            c = chunk[tile]
            kv_start = s * c
            kv_end = np.where(s == n - 1, t.kv_end[tile], kv_start + c)
            cost = (kv_end - kv_start) * t.n_tok[tile]
        else:
            tile = np.arange(num_tiles)
            cost = t.kv_end * t.n_tok
        order = np.argsort(-cost, kind="stable")
        tp = tile[order]
        num_pieces = len(order)
        num_items = num_pieces * heads
        if num_items == 0:
            return 0, 0, 0

        rows = np.empty((num_pieces, ITEM_INTS), dtype=np.int32)
        rows[:] = _PIECE_ROW
        rows[:, _TILE_FIELDS] = t.table[tp]
        if split:
            rows[:, _F["kv_start"]] = kv_start[order]
            rows[:, _F["kv_end"]] = kv_end[order]
            rows[:, _F["num_splits"]] = n[order]

        cs = cost[order]
        reorder = heads > 1 and ((q.nh != q.nh[0]).any() or (
            split and ((cs[1:] == cs[:-1]) & (tp[1:] == tp[:-1])).any()))
        out = (self._scratch if reorder else dst)[:num_items * ITEM_INTS].reshape(num_pieces, -1)
        np.add(np.tile(rows, heads), q.head_rows, out=out)

        rows_taken = groups_taken = 0
        if split:
            # Each (tile, head chunk) of a split tile is a merge group with consecutive workspace
            # rows for its pieces; groups are numbered and placed in the unsorted item order.
            is_split = counts > 1
            tile_rows = np.where(is_split, t.n_tok * counts, 0)  # per query head of the group
            base = rows_used + self.num_q_heads * (np.cumsum(tile_rows) - tile_rows)
            gid = groups + heads * (np.cumsum(is_split) - is_split)
            ps = is_split[tp]
            items = out.reshape(num_pieces, heads, ITEM_INTS)
            slot_base = np.where(ps, base[tp], 0)[:, None] + tile_rows[tp][:, None] * q.nh_first
            items[:, :, _F["slot_base"]] = slot_base
            items[:, :, _F["slot"]] = np.where(
                ps[:, None], slot_base + (s[order] * t.n_tok[tp])[:, None] * q.nh, -1)
            items[:, :, _F["merge_id"]] = np.where(ps[:, None], gid[tp][:, None] + np.arange(heads), 0)
            rows_taken = self.num_q_heads * int(tile_rows.sum())
            groups_taken = heads * int(is_split.sum())

        if reorder:
            # Unsorted position of each item: its tile's first item, then chunk by chunk, split by
            # split; the sort key puts cost first and that position second.
            first = (np.cumsum(counts) - counts)[tp] if split else tp
            within = s[order] if split else 0
            n_split = counts[tp] if split else np.ones(num_pieces, dtype=np.int64)
            position = (first * heads + within)[:, None] + n_split[:, None] * np.arange(heads)
            key = -(cs[:, None] * q.nh) * num_items + position
            np.take(out.reshape(num_items, ITEM_INTS), np.argsort(key.reshape(-1), kind="stable"),
                    axis=0, out=dst[:num_items * ITEM_INTS].reshape(num_items, ITEM_INTS))
        return num_items, rows_taken, groups_taken

    def _decode_slots_per_sm(self, n_prefill: int, n_decode: int, tiles: dict[str, _Tiles]) -> int:
        if n_decode == 0:
            return 0
        if n_prefill == 0 or self.ctas_per_sm == 1:
            return self.ctas_per_sm
        t_prefill, t_decode = (self._work_seconds(self._queues[k], tiles[k]) for k in ("prefill", "decode"))
        share = t_decode / (t_prefill + t_decode)
        return int(min(self.ctas_per_sm - 1, max(self.min_decode_slots, round(share * self.ctas_per_sm))))
