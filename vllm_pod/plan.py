"""Batch planning for the fused POD kernel, testable on a CPU.

A plan cuts a hybrid batch into work items, each a tile of query rows (tokens x query heads of one
KV head's GQA group) against a range of that request's keys:

* requests whose rows fit 16 (decodes, short extends) get *decode tiles* of 16 rows, whose warps
  split the keys; the rest get *prefill tiles* (64 rows, 128 with the Hopper tile) whose warps
  split the rows;
* when a kind has too few items to fill its share of the GPU, long key ranges are cut into
  KV-splits (bounded: about one prefill or two decode items per CTA slot) merged in-kernel by the
  last split; a batch of decodes alone is cut until its last wave over the decode teams is full;
* each queue is ordered longest first, and the plan says how many CTAs per SM prefer decode work;
* optionally (cost_splits), items whose estimated time exceeds the batch's makespan target are cut
  further;
* with a sliding window W (a planner per window), a tile's keys start at its first row's window
  (rounded down to SPLIT_ALIGN) instead of 0, and every count above is of the keys in that range.
  A KV-split before a late row's window holds no key of that row: the kernel masks it to an empty
  partial that the merge weighs 0; every row sees its own position in its tile's last split.

The layout written here is read by csrc/pod/params.cuh (keep the two in step).

Planning runs on the host once per step, so its core, _plan_batch, is one loop compiled by numba
(a dependency of vLLM): it reads the host lengths and writes the header and items straight into a
pinned host buffer that one asynchronous copy sends to the device. A planner compiles it (or loads
it from numba's on-disk cache) when it is constructed, so no serving step pays for compilation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
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
# The D of the kernel build that runs a head dim (build_head_dim in csrc/pod_attention.cpp): 96
# runs on the 128 build, whose workspace rows are 128 wide.
BUILD_HEAD_DIMS = {64: 64, 96: 128, 128: 128, 256: 256}
MAX_SM_IDS = 1024  # kMaxSmIds (csrc/pod/params.cuh): bound on the SM ids the kernel indexes by
COUNTER_MERGE_BASE = 4 + MAX_SM_IDS  # kCtrSmSlots + kMaxSmIds

DECODE_TILE_ROWS = 16
# Rows of the mma.sync prefill tile (4 warps x one m16 tile). The Hopper tile has 128 (64 at head
# dim 256) and tuning builds may differ, so the backend passes the device's value
# (ops.device_prefill_tile_rows).
DEFAULT_PREFILL_TILE_ROWS = 64
SPLIT_ALIGN = 64  # KV-split boundaries: multiples of the decode tiles' keys (a prefill tile may end partial)
MIN_SPLIT_KEYS = {"decode": 256, "prefill": 1024}
# A queue is KV-split only while it has fewer items than this many per CTA slot. Prefill pieces
# cost a partial tile of up to 128 rows written, re-read and merged, so prefill splits only to
# fill one wave; short decode items split down to two per slot.
SPLIT_ITEMS_PER_SLOT = {"decode": 2, "prefill": 1}
# Decode teams per SM: the warp-specialized kernel (one CTA per SM) runs three once its prefill
# queue is empty (csrc/pod/pod_kernel_sm90.cuh); a CTA of the two-CTA kernel is one team.
WARP_SPECIALIZED_DECODE_TEAMS = 3
# A batch of decodes alone is split at least to the fewest pieces per item whose last wave over
# the decode teams is at least WAVE_FILL full (within WAVE_MAX waves): one team's rate is bound by
# its own loop's latency, not by HBM, so teams left idle by a part-filled last wave leave
# bandwidth unused (docs/design.md, "fp8 KV cache").
WAVE_FILL = 0.95
WAVE_MAX = 8


def decode_teams_per_sm(ctas_per_sm: int) -> int:
    return WARP_SPECIALIZED_DECODE_TEAMS if ctas_per_sm == 1 else ctas_per_sm

# The two-CTA kernel's per-CTA rates, traced on an H100 (each kind runs at the same rate beside the
# other kind as alone: docs/design.md, "The scheduler and the prefill/decode mix"). They set the
# prefill:decode CTA mix and, with cost_splits, each item's estimated time.
PREFILL_FLOPS_PER_CTA_S = 2.0e12  # attention FLOPs (4 x rows x keys x head_dim) per second
DECODE_BYTES_PER_CTA_S = 20e9     # K/V bytes (4 x keys x head_dim: fp16/bf16 K and V) per second
ITEM_SECONDS = 8e-6               # an item's fixed cost (claim, prologue, epilogue; trace fit)
MERGE_SECONDS = 30e-6             # what the piece that ends a KV-split group adds by merging it


# The planner's geometry as _plan_batch reads it. PodPlanner._config: int64 slots
(_NUM_Q_HEADS, _HEAD_DIM, _NUM_SMS, _CTAS_PER_SM, _MIN_DECODE_SLOTS, _COST_SPLITS, _MAX_ITEMS,
 _MAX_SPLIT_ROWS, _MAX_MERGE_GROUPS, _SLIDING_WINDOW, _DECODE_TEAMS, _NUM_CONFIG) = range(12)
# PodPlanner._queues: one row per tile kind, in plan order (prefill items first)
_PREFILL, _DECODE = 0, 1
(_TOKENS, _SPLIT_TARGET, _MIN_SPLIT_KEYS, _NUM_CHUNKS, _NUM_QUEUE) = range(5)
# PodPlanner._head_chunks[kind, chunk]: a KV head's GQA group cut to the tile's rows, in item
# order (KV head, then h0); nh_first counts the query heads of all chunks before it (its rows'
# offset in a tile's workspace).
_KV_HEAD, _H0, _NH, _NH_FIRST = range(4)
# _plan_batch's tile table, one row per tile: request, first token, tokens, position of the first,
# its key range [kv_start, kv_end) (from its first row's window, a multiple of SPLIT_ALIGN, to its
# last token), keys per KV-split and number of splits.
_REQ, _Q_START, _N_TOK, _Q_POS0, _KV_START, _KV_END, _CHUNK, _COUNT, _TILE_COLUMNS = range(9)
# _plan_batch's status
_OK, _BAD_LENGTHS, _DECODES_NOT_FIRST, _OVER_CAPACITY = range(4)

_jit = numba.njit(cache=True, nogil=True)


@_jit
def _align_split(keys):
    """keys rounded up to a multiple of SPLIT_ALIGN."""
    return -(-keys // SPLIT_ALIGN) * SPLIT_ALIGN


@_jit
def _makespan_target(prefill_seconds, decode_seconds, num_sms, ctas_per_sm):
    """See PodPlanner.makespan_target."""
    if ctas_per_sm == 1:
        return max(prefill_seconds, decode_seconds) / num_sms
    return (prefill_seconds + decode_seconds) / (num_sms * ctas_per_sm)


@_jit
def _work_seconds(tiles, kind, config, num_chunks):
    """CTA-seconds of a queue's attention work, split or not (a tile's pieces cover its keys once)."""
    if kind == _PREFILL:
        token_keys = 0
        for i in range(tiles.shape[0]):
            token_keys += tiles[i, _N_TOK] * _keys(tiles, i)
        flops = 4 * config[_NUM_Q_HEADS] * token_keys
        return float(flops) * config[_HEAD_DIM] / PREFILL_FLOPS_PER_CTA_S
    return float(4 * num_chunks * _total_keys(tiles)) * config[_HEAD_DIM] / DECODE_BYTES_PER_CTA_S


@_jit
def _keys(tiles, i):
    """Keys in tile i's range."""
    return tiles[i, _KV_END] - tiles[i, _KV_START]


@_jit
def _total_keys(tiles):
    total = 0
    for i in range(tiles.shape[0]):
        total += _keys(tiles, i)
    return total


@_jit
def _split_count(tiles, i, chunk):
    # Split boundaries kv_start + s*chunk must not pass the tile's first position, so the last
    # split holds every row's own position. Without a window every row then sees keys in every
    # split (no empty softmax rows to merge); with one, a split before a late row's window is
    # empty for that row (its partial weighs 0 in the merge).
    return max(1, min(-(-_keys(tiles, i) // chunk),
                      1 + (tiles[i, _Q_POS0] - tiles[i, _KV_START]) // chunk))


@_jit
def _wave_target(n_items, total_keys, min_keys, teams):
    """Items for a batch of decodes alone: n_items times the fewest pieces per item whose last wave
    over `teams` is at least WAVE_FILL full (else the fullest), pieces of min_keys keys at least
    on average, within WAVE_MAX waves."""
    best, best_fill = n_items, 0.0
    pieces = 1
    while n_items * pieces <= WAVE_MAX * teams and total_keys >= n_items * pieces * min_keys:
        waves = n_items * pieces / teams
        fill = waves / math.ceil(waves)
        if fill > best_fill + 1e-9:
            best, best_fill = n_items * pieces, fill
        if fill >= WAVE_FILL:
            break
        pieces += 1
    return best


@_jit
def _count_chunks(tiles, queue, target):
    """Sets each tile's keys per KV-split by the item-count rule (target: the queue's items);
    False when the queue has enough items unsplit. Each tile is cut into even pieces of about the
    queue's chunk: a short last piece would pay a whole partial write and merge for a few keys (a
    12480-key tile cut at 12416 did)."""
    n_items = tiles.shape[0] * queue[_NUM_CHUNKS]
    if n_items == 0 or n_items >= target:
        return False
    total = _total_keys(tiles) * queue[_NUM_CHUNKS]
    chunk = _align_split(max(queue[_MIN_SPLIT_KEYS], -(-total // target)))
    for i in range(tiles.shape[0]):
        pieces = max(1, (_keys(tiles, i) + chunk // 2) // chunk)
        tiles[i, _CHUNK] = _align_split(-(-_keys(tiles, i) // pieces))
    return True


@_jit
def _cost_chunks(queue_tiles, has_chunk, config, queues, head_chunks):
    """Tightens the chunks so that no item's estimated time exceeds the makespan target.

    The target comes from the plan of the item-count rule; further cuts only add fixed costs, so
    it stays a lower bound of the final plan's and the order of the cuts does not matter. A tile
    over it is cut into even pieces of at most `cap` keys, the most whose piece (fixed cost and
    merge included, and the up to n_tok - 1 keys more that a last piece may get when the causal
    rule stops the cuts early) fits the target. A tile for which not even a SPLIT_ALIGN-key piece
    would fit is left as it is."""
    seconds = np.zeros(2)
    for kind in range(2):
        tiles, heads = queue_tiles[kind], queues[kind, _NUM_CHUNKS]
        n_pieces, n_split = tiles.shape[0], 0
        if has_chunk[kind]:
            n_pieces = 0
            for i in range(tiles.shape[0]):
                n = _split_count(tiles, i, tiles[i, _CHUNK])
                n_pieces += n
                n_split += n > 1
        seconds[kind] = (ITEM_SECONDS * (heads * n_pieces) + MERGE_SECONDS * (heads * n_split)
                         + _work_seconds(tiles, kind, config, heads))
    target = _makespan_target(seconds[_PREFILL], seconds[_DECODE], config[_NUM_SMS],
                              config[_CTAS_PER_SM])
    for kind in range(2):
        tiles = queue_tiles[kind]
        # Seconds one key adds to an item of each tile (its widest head chunk).
        widest = head_chunks[kind, 0, _NH]
        over = np.zeros(tiles.shape[0], dtype=np.bool_)
        cap = np.zeros(tiles.shape[0], dtype=np.int64)
        any_over = False
        for i in range(tiles.shape[0]):
            if kind == _PREFILL:
                key_s = 4 * tiles[i, _N_TOK] * widest * config[_HEAD_DIM] / PREFILL_FLOPS_PER_CTA_S
            else:
                key_s = 4 * config[_HEAD_DIM] / DECODE_BYTES_PER_CTA_S
            fits = math.floor((target - ITEM_SECONDS - MERGE_SECONDS) / key_s)
            cap[i] = (fits - (tiles[i, _N_TOK] - 1)) // SPLIT_ALIGN * SPLIT_ALIGN
            if has_chunk[kind] and _split_count(tiles, i, tiles[i, _CHUNK]) > 1:
                over[i] = tiles[i, _CHUNK] > cap[i]
            else:
                over[i] = ITEM_SECONDS + _keys(tiles, i) * key_s > target
            over[i] &= cap[i] >= SPLIT_ALIGN
            any_over |= over[i]
        if any_over:
            for i in range(tiles.shape[0]):
                if not has_chunk[kind]:
                    tiles[i, _CHUNK] = _keys(tiles, i)
                if over[i]:
                    pieces = -(-_keys(tiles, i) // cap[i])
                    tiles[i, _CHUNK] = _align_split(-(-_keys(tiles, i) // pieces))
            has_chunk[kind] = True


@_jit
def _fit_capacity(queue_tiles, has_chunk, config, queues):
    """Sets each tile's split count (1: unsplit queue) so that the plan fits the persistent
    buffers: coarser splits while it does not, unsplit at the limit. Returns the plan's item count
    and whether it fits."""
    while True:
        n_items = rows_used = groups = 0
        for kind in range(2):
            tiles, heads = queue_tiles[kind], queues[kind, _NUM_CHUNKS]
            for i in range(tiles.shape[0]):
                n = _split_count(tiles, i, tiles[i, _CHUNK]) if has_chunk[kind] else 1
                tiles[i, _COUNT] = n
                n_items += heads * n
                if n > 1:
                    groups += heads
                    rows_used += config[_NUM_Q_HEADS] * tiles[i, _N_TOK] * n
        if rows_used <= config[_MAX_SPLIT_ROWS] and groups <= config[_MAX_MERGE_GROUPS] \
                and n_items <= config[_MAX_ITEMS]:
            return n_items, True
        if not (has_chunk[_PREFILL] or has_chunk[_DECODE]):
            return n_items, False
        for kind in range(2):
            tiles = queue_tiles[kind]
            if has_chunk[kind]:
                # Doubling stops where every tile is one piece anyway.
                smallest = tiles[0, _CHUNK]
                for i in range(tiles.shape[0]):
                    smallest = min(smallest, tiles[i, _CHUNK])
                    tiles[i, _CHUNK] *= 2
                has_chunk[kind] = smallest < 1 << 30


@_jit
def _write_queue(tiles, chunks, config, items, first_item, rows_used, groups):
    """Writes a queue's items into items[first_item:], longest first, and returns (items,
    workspace rows, merge groups) it used. rows_used/groups: those taken by earlier queues.

    The order is that of a stable sort by cost (keys x rows) of the items listed tile by tile,
    head chunk by head chunk, split by split."""
    heads, num_tiles = chunks.shape[0], tiles.shape[0]
    num_pieces = 0
    for i in range(num_tiles):
        num_pieces += tiles[i, _COUNT]
    if num_pieces == 0:
        return 0, 0, 0
    # Pieces (a tile's KV-splits) tile by tile, with keys x tokens as their cost.
    piece_tile = np.empty(num_pieces, dtype=np.int64)
    piece_split = np.empty(num_pieces, dtype=np.int64)
    piece_cost = np.empty(num_pieces, dtype=np.int64)
    # Per tile: its first piece; for a split tile, where its merge groups and workspace rows begin.
    first_piece = np.empty(num_tiles, dtype=np.int64)
    group_base = np.zeros(num_tiles, dtype=np.int64)
    slot_base = np.zeros(num_tiles, dtype=np.int64)
    p = tile_rows = split_tiles = 0
    for i in range(num_tiles):
        n, chunk = tiles[i, _COUNT], tiles[i, _CHUNK]
        first_piece[i] = p
        for s in range(n):
            keys = (_keys(tiles, i) - s * chunk) if s == n - 1 else chunk
            piece_tile[p], piece_split[p], piece_cost[p] = i, s, keys * tiles[i, _N_TOK]
            p += 1
        if n > 1:
            # Each (tile, head chunk) is a merge group with consecutive workspace rows for its
            # pieces; groups are numbered and placed in the unsorted item order.
            slot_base[i] = rows_used + config[_NUM_Q_HEADS] * tile_rows
            group_base[i] = groups + heads * split_tiles
            tile_rows += tiles[i, _N_TOK] * n  # per query head
            split_tiles += 1

    num_items = num_pieces * heads
    at = first_item
    one_width = True
    for h in range(heads):
        one_width &= chunks[h, _NH] == chunks[0, _NH]
    if one_width:
        # The order is the pieces' stable order by cost, each piece's items chunk by chunk,
        # except that pieces of one tile that cost the same are taken chunk by chunk together.
        order = _argsort_descending(piece_cost)
        run = 0
        while run < num_pieces:
            end = run + 1
            while end < num_pieces and piece_cost[order[end]] == piece_cost[order[run]] \
                    and piece_tile[order[end]] == piece_tile[order[run]]:
                end += 1
            for r in range(run, end):
                p = order[r]
                _write_items(items, at + r - run, end - run, tiles, chunks, piece_tile[p],
                             piece_split[p], 0, heads, slot_base, group_base)
            at += (end - run) * heads
            run = end
    else:
        # Chunks of two widths (a GQA group that is no multiple of the tile's heads): sort the
        # items themselves, listed in that order.
        item_piece = np.empty(num_items, dtype=np.int64)
        item_chunk = np.empty(num_items, dtype=np.int64)
        item_cost = np.empty(num_items, dtype=np.int64)
        e = 0
        for i in range(num_tiles):
            for h in range(heads):
                for s in range(tiles[i, _COUNT]):
                    item_piece[e], item_chunk[e] = first_piece[i] + s, h
                    item_cost[e] = piece_cost[first_piece[i] + s] * chunks[h, _NH]
                    e += 1
        for e in _argsort_descending(item_cost):
            p, h = item_piece[e], item_chunk[e]
            _write_items(items, at, 1, tiles, chunks, piece_tile[p], piece_split[p], h, h + 1,
                         slot_base, group_base)
            at += 1
    return num_items, config[_NUM_Q_HEADS] * tile_rows, heads * split_tiles


@_jit
def _argsort_descending(cost):
    """Indices ordering cost from largest to smallest, ties in index order: a bottom-up merge
    sort (numba's own sorts add seconds to the compilation)."""
    n = cost.shape[0]
    order, merged = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    for k in range(n):
        order[k] = k
    width = 1
    while width < n:
        for lo in range(0, n, 2 * width):
            mid, hi = min(lo + width, n), min(lo + 2 * width, n)
            i, j = lo, mid
            for k in range(lo, hi):
                if j == hi or (i < mid and cost[order[i]] >= cost[order[j]]):
                    merged[k] = order[i]
                    i += 1
                else:
                    merged[k] = order[j]
                    j += 1
        order, merged = merged, order
        width *= 2
    return order


@_jit
def _write_items(items, at, stride, tiles, chunks, i, s, first_chunk, end_chunk, slot_base,
                 group_base):
    """Writes split s of tile i with head chunks first_chunk..end_chunk-1 as items at,
    at + stride, ... The trace fields stay zero (host buffers start zeroed and no plan writes
    them)."""
    n, chunk, n_tok = tiles[i, _COUNT], tiles[i, _CHUNK], tiles[i, _N_TOK]
    req, q_start, q_pos0 = tiles[i, _REQ], tiles[i, _Q_START], tiles[i, _Q_POS0]
    kv_start = tiles[i, _KV_START] + s * chunk
    kv_end = tiles[i, _KV_END] if s == n - 1 else kv_start + chunk
    for h in range(first_chunk, end_chunk):
        slot, base, merge_id = -1, 0, 0
        if n > 1:
            base = slot_base[i] + n_tok * n * chunks[h, _NH_FIRST]
            slot = base + s * n_tok * chunks[h, _NH]
            merge_id = group_base[i] + h
        # In ITEM_FIELDS order.
        items[at, 0], items[at, 1], items[at, 2], items[at, 3] = (
            req, chunks[h, _KV_HEAD], chunks[h, _H0], chunks[h, _NH])
        items[at, 4], items[at, 5], items[at, 6] = q_start, n_tok, q_pos0
        items[at, 7], items[at, 8], items[at, 9], items[at, 10] = kv_start, kv_end, slot, base
        items[at, 11], items[at, 12] = n, merge_id
        at += stride


@_jit
def _plan_batch(qsl, seq_len, num_decodes, config, queues, head_chunks, header, items):
    """Plans one batch into a host buffer that csrc/pod/params.cuh reads: header (its
    PLAN_HEADER_INTS int32) and items ([max items, ITEM_INTS] int32, its rest).

    qsl [num_reqs + 1] and seq_len [num_reqs] are the host lengths; num_decodes, the requests
    vLLM placed first as decodes (checked; -1: unknown). config, queues and head_chunks are the
    planner's geometry (the slots named above). Returns (status, prefill items, decode items,
    decode slots per SM); the buffer is written only with status _OK, and with _OVER_CAPACITY
    the second value is the item count that did not fit.

    The steps: tiles of each request's query (decode tiles where the query fits one, prefill tiles
    otherwise); per queue, each tile's KV-split chunk by the item-count rule, tightened by the cost
    rule with cost_splits, and coarsened until the plan fits the buffers; each queue's items,
    longest first; the CTAs per SM that start on decode work, from the kinds' work.
    """
    num_reqs = seq_len.shape[0]
    decode_tokens = queues[_DECODE, _TOKENS]
    window = config[_SLIDING_WINDOW]
    num_tiles = np.zeros(2, dtype=np.int64)
    decodes_first = True
    for r in range(num_reqs):
        q_len = np.int64(qsl[r + 1]) - qsl[r]
        if q_len < 0 or q_len > seq_len[r]:
            return _BAD_LENGTHS, 0, 0, 0
        decodes_first = decodes_first and (r >= num_decodes or q_len <= decode_tokens)
        if q_len > 0:
            kind = _DECODE if q_len <= decode_tokens else _PREFILL
            num_tiles[kind] += -(-q_len // queues[kind, _TOKENS])
    if not decodes_first:
        return _DECODES_NOT_FIRST, 0, 0, 0

    table = np.zeros((num_tiles[_PREFILL] + num_tiles[_DECODE], _TILE_COLUMNS), dtype=np.int64)
    queue_tiles = (table[:num_tiles[_PREFILL]], table[num_tiles[_PREFILL]:])
    filled = np.zeros(2, dtype=np.int64)
    for r in range(num_reqs):
        q_len = np.int64(qsl[r + 1]) - qsl[r]
        if q_len == 0:
            continue
        kind = _DECODE if q_len <= decode_tokens else _PREFILL
        tokens = queues[kind, _TOKENS]
        tiles = queue_tiles[kind]
        for t0 in range(0, q_len, tokens):
            i = filled[kind]
            filled[kind] += 1
            n_tok = min(tokens, q_len - t0)
            q_pos0 = seq_len[r] - q_len + t0
            tiles[i, _REQ], tiles[i, _Q_START], tiles[i, _N_TOK] = r, qsl[r] + t0, n_tok
            tiles[i, _Q_POS0], tiles[i, _KV_END] = q_pos0, q_pos0 + n_tok
            if window:
                # The first row sees keys from q_pos0 - window + 1 on; later rows, fewer of these.
                first_key = max(0, q_pos0 - window + 1)
                tiles[i, _KV_START] = first_key // SPLIT_ALIGN * SPLIT_ALIGN

    has_chunk = np.zeros(2, dtype=np.bool_)
    for kind in range(2):
        target = queues[kind, _SPLIT_TARGET]
        if kind == _DECODE and num_tiles[_PREFILL] == 0:
            heads = queues[_DECODE, _NUM_CHUNKS]
            target = max(target, _wave_target(num_tiles[_DECODE] * heads,
                                              _total_keys(queue_tiles[_DECODE]) * heads,
                                              queues[_DECODE, _MIN_SPLIT_KEYS], config[_DECODE_TEAMS]))
        has_chunk[kind] = _count_chunks(queue_tiles[kind], queues[kind], target)
    if config[_COST_SPLITS]:
        _cost_chunks(queue_tiles, has_chunk, config, queues, head_chunks)
    n_items, fits = _fit_capacity(queue_tiles, has_chunk, config, queues)
    if not fits:
        return _OVER_CAPACITY, n_items, 0, 0

    written = np.zeros(2, dtype=np.int64)
    rows_used = groups = np.int64(0)  # not literals: one compiled _write_queue
    for kind in range(2):
        chunks = head_chunks[kind, :queues[kind, _NUM_CHUNKS]]
        n, rows, grps = _write_queue(queue_tiles[kind], chunks, config, items, written[_PREFILL],
                                     rows_used, groups)
        written[kind] = n
        rows_used += rows
        groups += grps

    n_prefill, n_decode = written[_PREFILL], written[_DECODE]
    ctas = config[_CTAS_PER_SM]
    if n_decode == 0:
        decode_slots = 0
    elif n_prefill == 0 or ctas == 1:
        decode_slots = ctas
    else:
        t_prefill = _work_seconds(queue_tiles[_PREFILL], _PREFILL, config, queues[_PREFILL, _NUM_CHUNKS])
        t_decode = _work_seconds(queue_tiles[_DECODE], _DECODE, config, queues[_DECODE, _NUM_CHUNKS])
        share = t_decode / (t_prefill + t_decode)
        decode_slots = min(ctas - 1, max(config[_MIN_DECODE_SLOTS], round(share * ctas)))
    header[0], header[1], header[2] = n_prefill, n_decode, decode_slots
    return _OK, n_prefill, n_decode, decode_slots


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
    sliding_window: int | None  # the window the key ranges were cut to (None: full causal)

    @property
    def items(self) -> np.ndarray:
        """[num_items, ITEM_INTS] as the kernel reads them (prefill items first), read back from
        the device buffer (a sync: for tests and logs), so valid until the planner's next plan."""
        n = self.num_prefill_items + self.num_decode_items
        items = self.buffer[PLAN_HEADER_INTS:PLAN_HEADER_INTS + n * ITEM_INTS]
        return items.to("cpu", copy=True).numpy().reshape(n, ITEM_INTS)


class PodPlanner:
    """Owns the persistent buffers of one attention layout and fills them once per batch."""

    def __init__(self, *, num_q_heads: int, num_kv_heads: int, head_dim: int, block_size: int,
                 num_sms: int, ctas_per_sm: int, max_num_reqs: int, max_num_tokens: int,
                 device: torch.device | str, prefill_rows: int | None = None,
                 split_items_per_slot: dict[str, int] | None = None, min_decode_slots: int = 1,
                 cost_splits: bool = False, sliding_window: int | None = None):
        """prefill_rows: rows of the built kernel's prefill tile (ops.device_prefill_tile_rows).
        split_items_per_slot: per kind, the KV-split target in items per CTA slot
        (SPLIT_ITEMS_PER_SLOT by default); batches of decodes alone also fill waves (WAVE_FILL).
        min_decode_slots: CTAs per SM that start on decode work whenever a batch has both kinds
        (1: decodes always run beside prefill; 0: a small decode share may wait for the prefill
        tail, where it fills the CTAs that run out of prefill items).
        cost_splits: also cut every item whose estimated time exceeds the batch's makespan target
        (see _cost_chunks).
        sliding_window: the layer's window W (a token sees keys pos - W < key <= pos), or None
        for full causal attention; items then skip the key tiles before their first row's window."""
        if num_kv_heads <= 0 or num_q_heads % num_kv_heads:
            raise ValueError(f"num_q_heads {num_q_heads} must be a multiple of num_kv_heads {num_kv_heads}")
        if sliding_window is not None and sliding_window < 1:
            raise ValueError(f"sliding_window {sliding_window}: must be None (full causal) or >= 1")
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
        self.sliding_window = sliding_window

        # Each kind's head chunks: every KV head's GQA group cut to the tile's rows.
        tile_rows = {"prefill": self.prefill_rows, "decode": DECODE_TILE_ROWS}
        chunks = {}
        for kind, rows in tile_rows.items():
            nh_max = min(self.group, rows)
            h0 = np.arange(0, self.group, nh_max)
            nh = np.tile(np.minimum(nh_max, self.group - h0), num_kv_heads)
            chunks[kind] = np.stack([np.repeat(np.arange(num_kv_heads), len(h0)),
                                     np.tile(h0, num_kv_heads), nh, np.cumsum(nh) - nh], axis=1)
        tokens = {kind: rows // chunks[kind][0, _NH] for kind, rows in tile_rows.items()}

        slots = num_sms * ctas_per_sm
        # Unsplit items: every request's tiles; the worst case has the most partial tiles.
        base = sum((max_num_tokens // tokens[kind] + max_num_reqs) * len(chunks[kind])
                   for kind in tile_rows)
        # Splitting happens only while a kind has fewer items than its target, so it adds at most
        # that many pieces again; decodes alone split into at most WAVE_MAX waves of teams. Cost
        # splits cut only items over the makespan target, fewer than one per CTA slot (per role
        # with one CTA per SM): room for two pieces each; beyond these buffers all splits coarsen
        # (_fit_capacity).
        per_slot = {**SPLIT_ITEMS_PER_SLOT, **(split_items_per_slot or {})}
        self.split_targets = {kind: n * slots for kind, n in per_slot.items()}
        self.decode_teams = num_sms * decode_teams_per_sm(ctas_per_sm)
        extra = num_sms * max(ctas_per_sm, 2) if self.cost_splits else 0
        most = {"prefill": self.split_targets["prefill"],
                "decode": max(self.split_targets["decode"], WAVE_MAX * self.decode_teams)}
        split_target = max(most.values()) + extra
        self.max_items = base + 2 * split_target
        # A piece's partial rows: up to its tile's (prefill or decode).
        self.max_split_rows = (2 * (most["prefill"] + extra) * self.prefill_rows
                               + max(2 * (self.split_targets["decode"] + extra),
                                     WAVE_MAX * self.decode_teams) * DECODE_TILE_ROWS)
        self.max_merge_groups = split_target

        # The geometry as _plan_batch reads it.
        config = np.zeros(_NUM_CONFIG, dtype=np.int64)
        config[[_NUM_Q_HEADS, _HEAD_DIM, _NUM_SMS, _CTAS_PER_SM, _MIN_DECODE_SLOTS, _COST_SPLITS,
                _MAX_ITEMS, _MAX_SPLIT_ROWS, _MAX_MERGE_GROUPS, _SLIDING_WINDOW, _DECODE_TEAMS]] = (
            num_q_heads, head_dim, num_sms, ctas_per_sm, min_decode_slots, self.cost_splits,
            self.max_items, self.max_split_rows, self.max_merge_groups, sliding_window or 0,
            self.decode_teams)
        self._config = config
        self._queues = np.zeros((2, _NUM_QUEUE), dtype=np.int64)
        self._head_chunks = np.zeros((2, max(len(c) for c in chunks.values()), 4), dtype=np.int64)
        for kind, row in (("prefill", _PREFILL), ("decode", _DECODE)):
            self._queues[row, [_TOKENS, _SPLIT_TARGET, _MIN_SPLIT_KEYS, _NUM_CHUNKS]] = (
                tokens[kind], self.split_targets[kind], MIN_SPLIT_KEYS[kind], len(chunks[kind]))
            self._head_chunks[row, :len(chunks[kind])] = chunks[kind]

        n_ints = PLAN_HEADER_INTS + self.max_items * ITEM_INTS
        # Two pinned host buffers, used in turn: one may still be copying while the next plan is
        # written into the other.
        cuda = self.device.type == "cuda"
        self._host = [torch.zeros(n_ints, dtype=torch.int32, pin_memory=cuda) for _ in range(2)]
        self._host_np = [h.numpy() for h in self._host]
        # Each buffer as (header, items) for _plan_batch; 2-D items index faster than a flat view.
        self._host_parts = [(h[:PLAN_HEADER_INTS], h[PLAN_HEADER_INTS:].reshape(-1, ITEM_INTS))
                            for h in self._host_np]
        self._copied = [torch.cuda.Event() for _ in range(2)] if cuda else None
        self._turn = 0
        self.buffer = torch.zeros(n_ints, dtype=torch.int32, device=self.device)
        self.counters = torch.zeros(COUNTER_MERGE_BASE + self.max_merge_groups, dtype=torch.int32,
                                    device=self.device)
        width = BUILD_HEAD_DIMS.get(head_dim, head_dim)  # the kernel's head dims, or any (CPU tests)
        self.workspace = torch.empty(self.max_split_rows * (width + 1), dtype=torch.float32,
                                     device=self.device)
        # Compiles _plan_batch (or loads it from numba's cache) on one decode, which fits any
        # capacity, into a host buffer that the first real plan overwrites.
        self._plan_into(0, np.array([0, 1], dtype=np.int32), np.array([1], dtype=np.int32), 1)

    def makespan_target(self, prefill_seconds: float, decode_seconds: float) -> float:
        """The time no schedule of the batch beats, from each kind's estimated CTA-seconds.

        With two or more CTAs per SM every CTA takes items of either kind once its own kind runs
        out, so it is the total over all CTA slots. With one CTA per SM the kernel runs a prefill
        and a decode role side by side, each on its own queue, so the batch lasts at least the
        larger kind's total over the SMs."""
        return _makespan_target(float(prefill_seconds), float(decode_seconds), self.num_sms,
                                self.ctas_per_sm)

    def _plan_into(self, turn: int, qsl: np.ndarray, seq_len: np.ndarray,
                   num_decodes: int | None) -> tuple[int, int, int]:
        """Plans a batch into host buffer `turn`; returns (prefill items, decode items, decode
        slots per SM)."""
        if qsl.shape != (len(seq_len) + 1,):
            raise ValueError(f"query_start_loc has {len(qsl)} entries for {len(seq_len)} requests")
        # One compiled signature: the int32 lengths vLLM keeps on the host.
        qsl, seq_len = qsl.astype(np.int32, copy=False), seq_len.astype(np.int32, copy=False)
        status, n_prefill, n_decode, decode_slots = _plan_batch(
            qsl, seq_len, -1 if num_decodes is None else num_decodes, self._config, self._queues,
            self._head_chunks, *self._host_parts[turn])
        if status == _BAD_LENGTHS:
            raise ValueError("every request needs 0 <= query length <= seq_len")
        if status == _DECODES_NOT_FIRST:
            raise ValueError("the first num_decodes requests must be decodes (query length 1)")
        if status == _OVER_CAPACITY:
            raise ValueError(f"batch of {n_prefill} work items exceeds the planner's capacity "
                             f"{self.max_items}; raise max_num_tokens/max_num_reqs")
        return n_prefill, n_decode, decode_slots

    def plan(self, query_start_loc_cpu: torch.Tensor, seq_lens_cpu: torch.Tensor,
             num_decodes: int | None = None) -> PodPlan:
        """Builds the plan of one batch from host-side lengths and stages it on the device.

        query_start_loc_cpu: [num_reqs + 1]; seq_lens_cpu: [num_reqs] (context including this
        step's tokens). Requests of query length 0 (CUDA-graph padding) get no work. num_decodes,
        if given, is checked: the decode requests vLLM placed first must fit decode tiles.
        """
        turn = self._turn
        if self._copied is not None:
            self._copied[turn].synchronize()  # that host buffer's previous copy has been consumed
        n_prefill, n_decode, decode_slots = self._plan_into(
            turn, query_start_loc_cpu.numpy(), seq_lens_cpu.numpy(), num_decodes)
        self._turn ^= 1
        n = PLAN_HEADER_INTS + (n_prefill + n_decode) * ITEM_INTS
        if self._copied is not None:
            self.buffer[:n].copy_(self._host[turn][:n], non_blocking=True)
            self._copied[turn].record()
        else:
            # numpy, not torch: torch splits a large CPU copy over threads, slow on a busy host.
            self.buffer.numpy()[:n] = self._host_np[turn][:n]
        return PodPlan(buffer=self.buffer, counters=self.counters, workspace=self.workspace,
                       num_prefill_items=n_prefill, num_decode_items=n_decode,
                       decode_slots_per_sm=decode_slots, ctas_per_sm=self.ctas_per_sm,
                       num_sms=self.num_sms, prefill_rows=self.prefill_rows,
                       sliding_window=self.sliding_window)
