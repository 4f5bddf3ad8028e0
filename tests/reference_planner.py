"""The planning rules of vllm_pod/plan.py written out item by item in plain Python loops.

PodPlanner builds its plans in one compiled loop over tiles and their KV-split pieces; this
module states the same rules one request, tile, KV head and split at a time, so that tests can
compare the two on many random batches.
It reads the planner's configuration (heads, tile rows, split targets, buffer capacities, window)
and constants, never its methods.
"""

from __future__ import annotations

import math

import numpy as np

from vllm_pod import plan as P


def _align(keys: int) -> int:
    return -(-keys // P.SPLIT_ALIGN) * P.SPLIT_ALIGN


def _keys(it):
    return it["kv_end"] - it["kv_start"]


def _tiles(pl, reqs, rows):
    """Unsplit items, request by request, tile by tile, heads innermost. A tile's keys run from
    its first row's window start (0 without a window), rounded down to SPLIT_ALIGN, to its last
    token."""
    nh = min(pl.group, rows)
    tok = rows // nh
    items = []
    for req, q_start, q_len, seq_len in reqs:
        for t0 in range(0, q_len, tok):
            n_tok = min(tok, q_len - t0)
            q_pos0 = seq_len - q_len + t0
            kv_start = 0
            if pl.sliding_window is not None:
                kv_start = max(0, q_pos0 - pl.sliding_window + 1) // P.SPLIT_ALIGN * P.SPLIT_ALIGN
            for kv_head in range(pl.num_kv_heads):
                for h0 in range(0, pl.group, nh):
                    items.append(dict(req=req, kv_head=kv_head, h0=h0, nh=min(nh, pl.group - h0),
                                      q_start=q_start + t0, n_tok=n_tok, q_pos0=q_pos0, kv_start=kv_start,
                                      kv_end=q_pos0 + n_tok, slot=-1, slot_base=0, num_splits=1,
                                      merge_id=0))
    return items


def _wave_target(pl, items):
    """Decode items of a batch of decodes alone: the fewest pieces per item that fill the last wave
    of decode teams to WAVE_FILL (else the fullest), at most WAVE_MAX waves, pieces of at least
    MIN_SPLIT_KEYS keys on average."""
    n, total = len(items), sum(_keys(it) for it in items)
    best, best_fill = n, 0.0
    for pieces in range(1, P.WAVE_MAX * pl.decode_teams + 1):
        if n * pieces > P.WAVE_MAX * pl.decode_teams or total < n * pieces * P.MIN_SPLIT_KEYS["decode"]:
            break
        fill = n * pieces / pl.decode_teams / math.ceil(n * pieces / pl.decode_teams)
        if fill > best_fill + 1e-9:
            best, best_fill = n * pieces, fill
        if fill >= P.WAVE_FILL:
            break
    return best


def _count_chunks(pl, items, kind, target):
    """Keys per split of each item from the item-count rule, or None (enough items whole)."""
    if not items or len(items) >= target:
        return None
    total = sum(_keys(it) for it in items)
    chunk = _align(max(P.MIN_SPLIT_KEYS[kind], -(-total // target)))
    out = []
    for it in items:
        pieces = max(1, (_keys(it) + chunk // 2) // chunk)
        out.append(_align(-(-_keys(it) // pieces)))
    return out


def _cost_chunks(pl, queues, chunks):
    """Tightens each tile's chunk until its pieces' estimated time fits the makespan target."""
    seconds = {}
    for kind, items in queues.items():
        n = [1 if chunks[kind] is None else _count(it, chunks[kind][i]) for i, it in enumerate(items)]
        if kind == "prefill":
            work = float(sum(4 * it["n_tok"] * it["nh"] * _keys(it) for it in items)) \
                * pl.head_dim / P.PREFILL_FLOPS_PER_CTA_S
        else:
            work = float(sum(4 * _keys(it) for it in items)) * pl.head_dim / P.DECODE_BYTES_PER_CTA_S
        seconds[kind] = (P.ITEM_SECONDS * sum(n) + P.MERGE_SECONDS * sum(1 for x in n if x > 1)
                         + work)
    if pl.ctas_per_sm == 1:
        target = max(seconds["prefill"], seconds["decode"]) / pl.num_sms
    else:
        target = (seconds["prefill"] + seconds["decode"]) / (pl.num_sms * pl.ctas_per_sm)
    out = {}
    for kind, items in queues.items():
        rows = pl.prefill_rows if kind == "prefill" else P.DECODE_TILE_ROWS
        new, changed = [], False
        for i, it in enumerate(items):
            if kind == "prefill":
                key_s = 4 * it["n_tok"] * min(pl.group, rows) * pl.head_dim / P.PREFILL_FLOPS_PER_CTA_S
            else:
                key_s = 4 * pl.head_dim / P.DECODE_BYTES_PER_CTA_S
            cap = (math.floor((target - P.ITEM_SECONDS - P.MERGE_SECONDS) / key_s)
                   - (it["n_tok"] - 1)) // P.SPLIT_ALIGN * P.SPLIT_ALIGN
            chunk = _keys(it) if chunks[kind] is None else chunks[kind][i]
            if chunks[kind] is not None and _count(it, chunk) > 1:
                over = chunk > cap
            else:
                over = P.ITEM_SECONDS + _keys(it) * key_s > target
            if over and cap >= P.SPLIT_ALIGN:
                pieces = -(-_keys(it) // cap)
                chunk = _align(-(-_keys(it) // pieces))
                changed = True
            new.append(chunk)
        out[kind] = new if changed else chunks[kind]
    return out


def _count(it, chunk):
    """Splits of an item at boundaries kv_start + s * chunk, none past its first position."""
    return max(1, min(-(-_keys(it) // chunk), 1 + (it["q_pos0"] - it["kv_start"]) // chunk))


def reference_plan(pl, query_start_loc, seq_lens):
    """(items [n, ITEM_INTS] int32, prefill items, decode items, decode slots per SM)."""
    qsl = [int(x) for x in query_start_loc]
    seq = [int(x) for x in seq_lens]
    decode_rows = min(pl.group, P.DECODE_TILE_ROWS)
    reqs = {"prefill": [], "decode": []}
    for r in range(len(seq)):
        q_len = qsl[r + 1] - qsl[r]
        if q_len > 0:
            kind = "decode" if q_len * decode_rows <= P.DECODE_TILE_ROWS else "prefill"
            reqs[kind].append((r, qsl[r], q_len, seq[r]))
    queues = {"prefill": _tiles(pl, reqs["prefill"], pl.prefill_rows),
              "decode": _tiles(pl, reqs["decode"], P.DECODE_TILE_ROWS)}
    targets = dict(pl.split_targets)
    if not queues["prefill"]:
        targets["decode"] = max(targets["decode"], _wave_target(pl, queues["decode"]))
    chunks = {kind: _count_chunks(pl, items, kind, targets[kind]) for kind, items in queues.items()}
    if pl.cost_splits:
        chunks = _cost_chunks(pl, queues, chunks)
    while True:
        out, rows_used, groups = {}, 0, 0
        for kind, items in queues.items():
            pieces = []
            for i, it in enumerate(items):
                chunk = None if chunks[kind] is None else chunks[kind][i]
                n = 1 if chunk is None else _count(it, chunk)
                if n == 1:
                    pieces.append(dict(it))
                    continue
                rows = it["n_tok"] * it["nh"]
                base, gid = rows_used, groups
                rows_used += rows * n
                groups += 1
                for s in range(n):
                    start = it["kv_start"] + s * chunk
                    pieces.append(dict(it, kv_start=start,
                                       kv_end=it["kv_end"] if s == n - 1 else start + chunk,
                                       num_splits=n, slot=base + s * rows, slot_base=base,
                                       merge_id=gid))
            # Longest first; Python's sort is stable.
            out[kind] = sorted(pieces, key=lambda it: -(it["kv_end"] - it["kv_start"])
                               * it["n_tok"] * it["nh"])
        n_items = len(out["prefill"]) + len(out["decode"])
        if rows_used <= pl.max_split_rows and groups <= pl.max_merge_groups \
                and n_items <= pl.max_items:
            break
        assert any(c is not None for c in chunks.values()), "over capacity"
        chunks = {k: None if c is None or min(c) >= 1 << 30 else [2 * x for x in c]
                  for k, c in chunks.items()}
    prefill, decode = out["prefill"], out["decode"]
    items = np.array([[it[f] for f in P.ITEM_FIELDS] + [0] * len(P.TRACE_FIELDS)
                      for it in prefill + decode], dtype=np.int32).reshape(-1, P.ITEM_INTS)
    if not decode:
        slots = 0
    elif not prefill or pl.ctas_per_sm == 1:
        slots = pl.ctas_per_sm
    else:
        t_prefill = float(sum(4 * it["n_tok"] * it["nh"] * (it["kv_end"] - it["kv_start"])
                              for it in prefill)) * pl.head_dim / P.PREFILL_FLOPS_PER_CTA_S
        t_decode = float(sum(4 * (it["kv_end"] - it["kv_start"]) for it in decode)) \
            * pl.head_dim / P.DECODE_BYTES_PER_CTA_S
        share = t_decode / (t_prefill + t_decode)
        slots = int(min(pl.ctas_per_sm - 1, max(pl.min_decode_slots, round(share * pl.ctas_per_sm))))
    return items, len(prefill), len(decode), slots
