"""The planner on the CPU: invariants the kernel relies on, and a float64 execution of the plan's
work items (splits merged as the kernel merges them) that must equal the reference."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from reference_planner import reference_plan
from vllm_pod.plan import (
    DECODE_BYTES_PER_CTA_S,
    DECODE_TILE_ROWS,
    ITEM_FIELDS,
    ITEM_SECONDS,
    MERGE_SECONDS,
    PREFILL_FLOPS_PER_CTA_S,
    SPLIT_ALIGN,
    WAVE_FILL,
    PodPlanner,
)
from vllm_pod.reference import gather_kv, reference_attention
from vllm_pod.testing import make_batch

F = {name: i for i, name in enumerate(ITEM_FIELDS)}


def planner_for(b, num_sms=4, ctas_per_sm=2, max_num_tokens=4096, max_num_reqs=64, prefill_rows=None,
                **options):
    return PodPlanner(num_q_heads=b.query.shape[1], num_kv_heads=b.key_cache.shape[2],
                      head_dim=b.query.shape[2], block_size=b.key_cache.shape[1], num_sms=num_sms,
                      ctas_per_sm=ctas_per_sm, max_num_reqs=max_num_reqs,
                      max_num_tokens=max_num_tokens, device="cpu", prefill_rows=prefill_rows, **options)


def execute_plan(b, plan):
    """Runs the items like the kernel: each writes its rows or its split's partial rows; the
    partials of a merge group are combined by log-sum-exp weights. With a sliding window W a row
    at position pos sees the keys pos - W < key <= pos of its item's range: a KV-split may hold
    none of them (its partial: output 0, log-sum-exp -inf, weight 0 in the merge), an unsplit item
    or a whole merge group may not."""
    hq, hkv = b.query.shape[1], b.key_cache.shape[2]
    group = hq // hkv
    window = plan.sliding_window
    out = torch.full(b.query.shape, float("nan"), dtype=torch.float64)
    written = torch.zeros(b.query.shape[:2], dtype=torch.int32)
    partial = {}
    groups = {}
    for it in plan.items:
        it = {k: int(it[i]) for k, i in F.items()}
        seq_len = int(b.seq_lens[it["req"]])
        k = gather_kv(b.key_cache, b.block_table[it["req"]], seq_len)[:, it["kv_head"]].double()
        v = gather_kv(b.value_cache, b.block_table[it["req"]], seq_len)[:, it["kv_head"]].double()
        heads = it["kv_head"] * group + it["h0"] + torch.arange(it["nh"])
        for t in range(it["n_tok"]):
            pos, token = it["q_pos0"] + t, it["q_start"] + t
            first = it["kv_start"] if window is None else max(it["kv_start"], pos - window + 1)
            keys = torch.arange(first, max(first, min(it["kv_end"], pos + 1)))
            if len(keys):
                s = (b.query[token, heads].double() @ k[keys].T) * b.scale  # [nh, keys]
                m = s.max(-1, keepdim=True).values
                w = torch.exp(s - m)
                o, lse = (w @ v[keys]) / w.sum(-1, keepdim=True), m[:, 0] + torch.log(w.sum(-1))
            else:
                assert window is not None and it["slot"] >= 0, "a row with no visible key in its item"
                o = torch.zeros(it["nh"], k.shape[1], dtype=torch.float64)
                lse = torch.full((it["nh"],), float("-inf"), dtype=torch.float64)
            if it["slot"] < 0:
                out[token, heads] = o
                written[token, heads] += 1
                continue
            for h in range(it["nh"]):
                row = t * it["nh"] + h
                assert it["slot"] + row not in partial, "two splits share a workspace row"
                partial[it["slot"] + row] = (o[h], lse[h])
                groups.setdefault(it["merge_id"], set()).add(
                    (it["slot_base"], it["num_splits"], it["n_tok"] * it["nh"], row, token,
                     int(heads[h])))
    for members in groups.values():
        meta = {m[:3] for m in members}
        assert len(meta) == 1, "splits of one merge group disagree on their workspace rows"
        slot_base, n, rows = meta.pop()
        for _, _, _, row, token, head in members:
            parts = [partial[slot_base + s * rows + row] for s in range(n)]
            lse = torch.stack([p[1] for p in parts])
            assert torch.isfinite(lse).any(), "a row with no visible key in any split"
            w = torch.softmax(lse, 0)
            out[token, head] = sum(wi * p[0] for wi, p in zip(w, parts))
            written[token, head] += 1
    return out, written


def check_invariants(b, plan, planner):
    items = plan.items
    assert items.shape[0] == plan.num_prefill_items + plan.num_decode_items
    rows = items[:, F["n_tok"]] * items[:, F["nh"]]
    assert (rows[:plan.num_prefill_items] <= planner.prefill_rows).all()
    assert (rows[plan.num_prefill_items:] <= DECODE_TILE_ROWS).all()
    assert (items[:, F["kv_start"]] % SPLIT_ALIGN == 0).all()
    assert (items[:, F["kv_start"]] <= items[:, F["q_pos0"]]).all()
    assert plan.sliding_window == planner.sliding_window
    if plan.sliding_window is not None:
        # No key tile before the first row's window; no piece before every row's window.
        window_start = items[:, F["q_pos0"]] - plan.sliding_window + 1
        assert (items[:, F["kv_start"]] >= np.maximum(0, window_start) // SPLIT_ALIGN * SPLIT_ALIGN).all()
        assert (items[:, F["kv_end"]] > window_start).all()
    assert (items[:, F["kv_end"]] <= items[:, F["q_pos0"]] + items[:, F["n_tok"]]).all()
    assert (items[:, F["kv_start"]] < items[:, F["kv_end"]]).all()
    split = items[:, F["slot"]] >= 0
    assert (items[split, F["slot"]] + rows[split] <= planner.max_split_rows).all()
    assert (items[split, F["merge_id"]] < planner.max_merge_groups).all()
    assert ((items[:, F["num_splits"]] > 1) == split).all()
    # Longest first within each queue.
    cost = (items[:, F["kv_end"]] - items[:, F["kv_start"]]) * rows
    for lo, hi in ((0, plan.num_prefill_items), (plan.num_prefill_items, len(items))):
        assert (np.diff(cost[lo:hi]) <= 0).all()
    assert 0 <= plan.decode_slots_per_sm <= plan.ctas_per_sm
    buf = planner.buffer
    assert buf[0] == plan.num_prefill_items and buf[1] == plan.num_decode_items
    assert torch.equal(buf[4:4 + items.size], torch.from_numpy(items.reshape(-1)))


def check_coverage(plan, planner, query_start_loc, seq_lens):
    """Every (token, query head) row of the batch meets each key it sees (pos - W < key <= pos;
    key <= pos without a window) in exactly one item, at its true position."""
    it = plan.items.astype(np.int64)
    qsl, seq = query_start_loc.numpy().astype(np.int64), seq_lens.numpy().astype(np.int64)
    hq = planner.num_q_heads
    q_len = np.diff(qsl)
    token_pos = np.concatenate([np.arange(s - q, s) for q, s in zip(q_len, seq)] + [[]]).astype(np.int64)
    window = plan.sliding_window
    # One entry per (item, token, head).
    rows = it[:, F["n_tok"]] * it[:, F["nh"]]
    e = np.repeat(np.arange(len(it)), rows)
    within = np.arange(rows.sum()) - np.repeat(np.cumsum(rows) - rows, rows)
    t, h = within // it[e, F["nh"]], within % it[e, F["nh"]]
    token = it[e, F["q_start"]] + t
    assert (it[e, F["q_pos0"]] + t == token_pos[token]).all(), "an item row at the wrong position"
    row = token * hq + it[e, F["kv_head"]] * planner.group + it[e, F["h0"]] + h
    pos = token_pos[token]
    first = np.zeros_like(pos) if window is None else np.maximum(0, pos - window + 1)
    lo = np.maximum(it[e, F["kv_start"]], first)
    hi = np.minimum(it[e, F["kv_end"]], pos + 1)
    seen = hi > lo
    row, lo, hi = row[seen], lo[seen], hi[seen]
    order = np.lexsort((lo, row))
    row, lo, hi = row[order], lo[order], hi[order]
    starts, ends = np.ones(len(row), dtype=bool), np.ones(len(row), dtype=bool)
    starts[1:] = ends[:-1] = row[1:] != row[:-1]
    assert np.array_equal(row[starts], np.arange(len(token_pos) * hq)), "a row sees no key"
    first_key = np.zeros_like(token_pos) if window is None else np.maximum(0, token_pos - window + 1)
    assert (lo[starts] == first_key[row[starts] // hq]).all(), "a row misses its first keys"
    assert (hi[ends] == token_pos[row[ends] // hq] + 1).all(), "a row misses its last keys"
    assert (lo[~starts] == hi[np.flatnonzero(~starts) - 1]).all(), "keys missed or met twice"


BATCHES = {
    "decode_only": ([1, 16, 17, 100, 300], []),
    "prefill_only": ([], [(70, 70), (33, 200)]),
    "mixed": ([5, 64, 129, 1000], [(100, 100), (1, 50), (64, 128), (17, 500)]),
    "one_token_chunks": ([1], [(1, 1), (1, 2), (1, 65)]),
    "padded_graph_batch": ([20, 30, 0, 0], []),  # padding requests: query length 0, seq_len 0
    "long_context_splits": ([3000, 2500], [(40, 5000)]),
}


# (query heads, KV heads): every shape on every batch, and one tensor-parallel rank's share of
# Llama-3-70B's 64/8 heads (TP 2, 4, 8) on the hybrid batches (decodes with prefill chunks).
HEADS = [(4, 1), (4, 4), (8, 2), (6, 2), (32, 1)]
TP_RANK_HEADS = [(32, 4), (16, 2), (8, 1)]
BATCH_HEADS = ([(name, heads) for name in BATCHES for heads in HEADS]
               + [(name, heads) for name in ("mixed", "one_token_chunks", "long_context_splits")
                  for heads in TP_RANK_HEADS])


# Sliding windows shorter than a block, than a key tile, than a prefill tile, and longer than some
# sequences (None: full causal attention).
WINDOWS = [None, 1, 16, 100, 1000]


@pytest.mark.parametrize("name, heads", BATCH_HEADS,
                         ids=[f"{name}-q{hq}-kv{hkv}" for name, (hq, hkv) in BATCH_HEADS])
@pytest.mark.parametrize("prefill_rows", [64, 128])  # the mma.sync and the Hopper prefill tile
@pytest.mark.parametrize("window", WINDOWS, ids=[f"w{w}" for w in WINDOWS])
def test_plan_executes_to_reference(name, heads, prefill_rows, window):
    decodes, prefills = BATCHES[name]
    b = make_batch([d for d in decodes if d], prefills, num_q_heads=heads[0], num_kv_heads=heads[1],
                   head_dim=16, block_size=16, dtype=torch.float32, seed=len(name))
    if name == "padded_graph_batch":
        b.query_start_loc = torch.tensor([0, 1, 2, 2, 2], dtype=torch.int32)
        b.seq_lens = torch.tensor([20, 30, 0, 0], dtype=torch.int32)
        b.block_table = torch.cat([b.block_table, torch.zeros_like(b.block_table)])
    planner = planner_for(b, prefill_rows=prefill_rows, sliding_window=window)
    plan = planner.plan(b.query_start_loc, b.seq_lens, num_decodes=len(decodes))
    check_invariants(b, plan, planner)
    check_coverage(plan, planner, b.query_start_loc, b.seq_lens)
    out, written = execute_plan(b, plan)
    n_tokens = int(b.query_start_loc[-1])
    assert (written[:n_tokens] == 1).all(), "every (token, head) written exactly once"
    ref = reference_attention(b.query, b.key_cache, b.value_cache, b.block_table,
                              b.query_start_loc, b.seq_lens, b.scale, sliding_window=window)
    torch.testing.assert_close(out[:n_tokens].float(), ref[:n_tokens], atol=1e-5, rtol=1e-5)


def test_long_decodes_are_split_when_few():
    b = make_batch([4000, 4000], [], num_q_heads=8, num_kv_heads=2, head_dim=16, block_size=16,
                   dtype=torch.float32)
    plan = planner_for(b).plan(b.query_start_loc, b.seq_lens)
    # 2 requests x 2 KV heads = 4 tiles for 16 CTA slots: each is cut into KV-splits.
    assert plan.num_decode_items > 4
    assert (plan.items[:, F["num_splits"]] > 1).all()


def test_prefill_splits_only_below_one_item_per_slot():
    # 2 chunks of 48 tokens x 2 KV heads, 16 tokens (x 4 heads) per 64-row tile: 12 prefill tiles
    # on 8 CTA slots, between one and two per slot. Prefill stays whole; 10 decode tiles are split.
    b = make_batch([], [(48, 3000)] * 2, num_q_heads=8, num_kv_heads=2, head_dim=16, block_size=16,
                   dtype=torch.float32)
    planner = planner_for(b, num_sms=4, ctas_per_sm=2, prefill_rows=64)
    plan = planner.plan(b.query_start_loc, b.seq_lens)
    assert 8 <= plan.num_prefill_items < 16 and (plan.items[:, F["num_splits"]] == 1).all()
    b = make_batch([3000] * 5, [], num_q_heads=8, num_kv_heads=2, head_dim=16, block_size=16,
                   dtype=torch.float32)
    plan = planner.plan(b.query_start_loc, b.seq_lens)
    assert plan.num_decode_items > 10 and (plan.items[:, F["num_splits"]] > 1).all()


def test_split_pieces_are_even():
    # Lengths just past a multiple of the split chunk used to leave a short last piece that paid
    # a whole partial write and merge for a few keys; now no piece is under half another's length.
    b = make_batch([1040, 2100, 3000, 4500], [(40, 5000), (1, 1090)], num_q_heads=8, num_kv_heads=2,
                   head_dim=16, block_size=16, dtype=torch.float32)
    planner = planner_for(b, split_items_per_slot={"prefill": 4, "decode": 4})
    plan = planner.plan(b.query_start_loc, b.seq_lens)
    keys = plan.items[:, F["kv_end"]] - plan.items[:, F["kv_start"]]
    split = plan.items[:, F["num_splits"]] > 1
    assert split.sum() > 8
    for gid in np.unique(plan.items[split, F["merge_id"]]):
        pieces = keys[split & (plan.items[:, F["merge_id"]] == gid)]
        assert pieces.min() >= pieces.max() // 2, f"merge group {gid}: pieces {pieces}"
    check_invariants(b, plan, planner)


def test_split_targets_and_decode_slots_are_options():
    # 12 prefill tiles on 8 slots: whole at one item per slot (above), split at four per slot.
    b = make_batch([], [(48, 3000)] * 2, num_q_heads=8, num_kv_heads=2, head_dim=16, block_size=16,
                   dtype=torch.float32)
    planner = planner_for(b, num_sms=4, ctas_per_sm=2, prefill_rows=64,
                          split_items_per_slot={"prefill": 4})
    plan = planner.plan(b.query_start_loc, b.seq_lens)
    assert plan.num_prefill_items > 16 and (plan.items[:, F["num_splits"]] > 1).all()
    check_invariants(b, plan, planner)
    # A small decode share: one decode-first CTA per SM by default, none with min_decode_slots=0.
    b = make_batch([16], [(2048, 4096)], num_q_heads=8, num_kv_heads=2, head_dim=16, block_size=16,
                   dtype=torch.float32)
    for min_slots in (1, 0):
        plan = planner_for(b, ctas_per_sm=4, min_decode_slots=min_slots).plan(b.query_start_loc, b.seq_lens)
        assert plan.decode_slots_per_sm == min_slots


def test_many_items_are_not_split():
    b = make_batch([300] * 40, [], num_q_heads=8, num_kv_heads=2, head_dim=16, block_size=16,
                   dtype=torch.float32)
    plan = planner_for(b).plan(b.query_start_loc, b.seq_lens)
    assert plan.num_decode_items == 80 and (plan.items[:, F["slot"]] == -1).all()


def test_decode_slots_follow_the_work_mix():
    b = make_batch([8000] * 4, [(8, 8)], num_q_heads=8, num_kv_heads=2, head_dim=16, block_size=16,
                   dtype=torch.float32)
    heavy_decode = planner_for(b, ctas_per_sm=4).plan(b.query_start_loc, b.seq_lens)
    b = make_batch([16], [(2048, 4096)], num_q_heads=8, num_kv_heads=2, head_dim=16, block_size=16,
                   dtype=torch.float32)
    heavy_prefill = planner_for(b, ctas_per_sm=4).plan(b.query_start_loc, b.seq_lens)
    assert heavy_decode.decode_slots_per_sm == 3 and heavy_prefill.decode_slots_per_sm == 1


def test_rejects_bad_lengths_and_misordered_decodes():
    b = make_batch([10], [(4, 8)], num_q_heads=8, num_kv_heads=1, head_dim=16, block_size=16,
                   dtype=torch.float32)
    planner = planner_for(b)
    with pytest.raises(ValueError, match="query length"):
        planner.plan(b.query_start_loc, torch.tensor([10, 2], dtype=torch.int32))
    with pytest.raises(ValueError, match="num_decodes"):
        planner.plan(b.query_start_loc, b.seq_lens, num_decodes=2)
    with pytest.raises(ValueError, match="multiple"):
        PodPlanner(num_q_heads=6, num_kv_heads=4, head_dim=128, block_size=16, num_sms=1,
                   ctas_per_sm=1, max_num_reqs=1, max_num_tokens=1, device="cpu")


def random_lengths(rng, max_reqs=80, long_context=20000):
    """query_start_loc and seq_lens of a random batch: decodes first, then short extends, prefill
    chunks and sometimes CUDA-graph padding (query length 0, seq_len 0)."""
    q_len = ([1] * int(rng.integers(0, max_reqs)) + [int(x) for x in rng.integers(2, 9, rng.integers(0, 4))]
             + [int(x) for x in rng.integers(1, 700, rng.integers(0, 6))])
    if not q_len:
        q_len = [1]
    seq = [q + int(rng.choice([0, rng.integers(0, 2000), rng.integers(0, long_context)])) for q in q_len]
    if rng.random() < 0.2:
        q_len, seq = q_len + [0, 0], seq + [0, 0]
    qsl = torch.tensor(np.concatenate([[0], np.cumsum(q_len)]), dtype=torch.int32)
    return qsl, torch.tensor(seq, dtype=torch.int32)


def random_planner(rng, **options):
    heads = [(32, 8), (8, 2), (4, 4), (6, 2), (32, 1), (71, 1), (24, 1), (28, 4)]
    hq, hkv = heads[int(rng.integers(len(heads)))]
    return PodPlanner(num_q_heads=hq, num_kv_heads=hkv, head_dim=int(rng.choice([64, 128])),
                      block_size=16, num_sms=int(rng.choice([2, 8, 132])),
                      ctas_per_sm=int(rng.choice([1, 2, 4])),
                      max_num_reqs=int(rng.choice([16, 256])),
                      max_num_tokens=int(rng.choice([256, 8192])), device="cpu",
                      prefill_rows=int(rng.choice([64, 128])),
                      min_decode_slots=int(rng.integers(0, 2)), **options)


@pytest.mark.parametrize("window", WINDOWS, ids=[f"w{w}" for w in WINDOWS])
@pytest.mark.parametrize("cost_splits", [False, True])
def test_planner_equals_item_by_item_reference(cost_splits, window):
    """The compiled planner writes exactly the plan that the rules give item by item, on random
    batches and planner shapes (uneven head chunks, split ties, buffers small enough to coarsen).
    Without a window the rules are those of the planner before windows existed."""
    rng = np.random.default_rng(14 + cost_splits)
    compared = 0
    for _ in range(150):
        planner = random_planner(rng, cost_splits=cost_splits, sliding_window=window)
        qsl, seq = random_lengths(rng)
        planner.buffer.fill_(-7)  # poison: every header and item int must be written
        try:
            plan = planner.plan(qsl, seq)
        except ValueError as e:
            assert "capacity" in str(e)
            continue
        items, n_prefill, n_decode, slots = reference_plan(planner, qsl, seq)
        assert (plan.num_prefill_items, plan.num_decode_items, plan.decode_slots_per_sm) == (
            n_prefill, n_decode, slots)
        np.testing.assert_array_equal(plan.items, items)
        assert planner.buffer[:3].tolist() == [n_prefill, n_decode, slots]
        compared += 1
    assert compared > 100


def test_windowed_plans_cover_each_visible_key_once():
    """With a window, no item's keys start before the key tile of its first row's window start,
    and every (token, query head) meets each key of its window in exactly one item; on random
    batches of long contexts, with and without cost splits."""
    rng = np.random.default_rng(21)
    split = 0
    for _ in range(150):
        window = int(rng.choice([1, 16, 100, 1000, 4096, 32768]))
        planner = random_planner(rng, cost_splits=bool(rng.integers(2)), sliding_window=window)
        qsl, seq = random_lengths(rng, long_context=int(rng.choice([20000, 131072])))
        try:
            plan = planner.plan(qsl, seq)
        except ValueError as e:
            assert "capacity" in str(e)
            continue
        check_invariants(None, plan, planner)
        check_coverage(plan, planner, qsl, seq)
        split += (plan.items[:, F["num_splits"]] > 1).any()
    assert split >= 20  # plans with KV-splits (30 of the 150)


@pytest.mark.parametrize("num_decodes,context,items,hybrid_items",
                         [(128, 8192, 3072, 1024), (32, 32768, 768, 256), (8, 131072, 384, 256)])
def test_decodes_alone_fill_whole_waves_of_decode_teams(num_decodes, context, items, hybrid_items):
    """Decodes alone on the warp-specialized kernel's 396 decode teams (132 SMs x 3): 1024 whole
    items would leave the last of 2.59 waves 59% full, the item-count rule's 768 pieces of 8 long
    decodes two waves of 1.94; the plan cuts each item into the fewest pieces that fill the last
    wave to 95% (3 pieces, 1.94 waves; 6 pieces, one wave). With a prefill beside them, the
    item-count rule alone applies (two items per CTA slot, 264: 1024 whole, 256 whole, 64 cut in 4)."""
    shape = dict(num_q_heads=32, num_kv_heads=8, head_dim=128, block_size=16, num_sms=132, ctas_per_sm=1,
                 max_num_reqs=256, max_num_tokens=8192, device="cpu", prefill_rows=128)
    planner = PodPlanner(**shape)
    assert planner.decode_teams == 396
    qsl = torch.arange(num_decodes + 1, dtype=torch.int32)
    seq = torch.full((num_decodes,), context, dtype=torch.int32)
    plan = planner.plan(qsl, seq)
    assert plan.num_decode_items == items
    waves = items / planner.decode_teams
    assert waves / math.ceil(waves) >= WAVE_FILL
    check_invariants(None, plan, planner)
    check_coverage(plan, planner, qsl, seq)
    qsl = torch.cat([qsl, torch.tensor([num_decodes + 512], dtype=torch.int32)])
    seq = torch.cat([seq, torch.tensor([4096], dtype=torch.int32)])
    plan = PodPlanner(**shape).plan(qsl, seq, num_decodes=num_decodes)
    assert plan.num_decode_items == hybrid_items


@pytest.mark.parametrize("window", [300, 1000, 4096])
def test_long_windowed_decodes_are_split_inside_the_window(window):
    """Long decodes with a window are cut into pieces of their window's keys only: the pieces of
    a decode start at the key tile of its window start and each holds keys it sees."""
    decodes = [100_000, 60_000, 5000, 700]
    b = make_batch(decodes, [], num_q_heads=8, num_kv_heads=2, head_dim=16, block_size=16,
                   dtype=torch.float32)
    planner = planner_for(b, sliding_window=window)
    plan = planner.plan(b.query_start_loc, b.seq_lens)
    check_invariants(b, plan, planner)
    it = plan.items
    for r, seq_len in enumerate(decodes):
        mine = it[it[:, F["req"]] == r]
        pos = seq_len - 1
        window_tile = max(0, pos - window + 1) // SPLIT_ALIGN * SPLIT_ALIGN
        if seq_len > 2 * window >= 2000:  # few items: split (a 300-key window stays whole)
            assert (mine[:, F["num_splits"]] > 1).all()
        for kv_head in range(2):
            pieces = mine[mine[:, F["kv_head"]] == kv_head]
            assert pieces[:, F["kv_start"]].min() == window_tile
            assert pieces[:, F["kv_end"]].max() == seq_len
            assert (pieces[:, F["kv_end"]] > pos - window + 1).all(), "a piece outside the window"
            assert (pieces[:, F["kv_end"]] - pieces[:, F["kv_start"]]).sum() == seq_len - window_tile
    out, written = execute_plan(b, plan)
    assert (written == 1).all()
    ref = reference_attention(b.query, b.key_cache, b.value_cache, b.block_table,
                              b.query_start_loc, b.seq_lens, b.scale, sliding_window=window)
    torch.testing.assert_close(out.float(), ref, atol=1e-5, rtol=1e-5)


def test_windowed_split_pieces_may_hold_no_key_of_late_rows():
    """A 128-token prefill tile with a 1000-key window, cut by the cost rule into 128-key pieces:
    its first pieces lie before its late rows' windows. Those rows get empty partials, weighed 0
    in the merge, and the plan still executes to the reference and matches the rules."""
    b = make_batch([], [(279, 1078), (242, 9455)], num_q_heads=1, num_kv_heads=1, head_dim=128,
                   block_size=16, dtype=torch.float32, seed=4)
    planner = planner_for(b, num_sms=1, ctas_per_sm=4, prefill_rows=128, cost_splits=True,
                          split_items_per_slot={"prefill": 0, "decode": 0}, sliding_window=1000)
    plan = planner.plan(b.query_start_loc, b.seq_lens)
    check_invariants(b, plan, planner)
    check_coverage(plan, planner, b.query_start_loc, b.seq_lens)
    it = plan.items
    last_pos = it[:, F["q_pos0"]] + it[:, F["n_tok"]] - 1
    assert ((it[:, F["num_splits"]] > 1) & (it[:, F["kv_end"]] <= last_pos - 1000 + 1)).any()
    items, *counts = reference_plan(planner, b.query_start_loc, b.seq_lens)
    np.testing.assert_array_equal(it, items)
    out, written = execute_plan(b, plan)
    assert (written == 1).all()
    ref = reference_attention(b.query, b.key_cache, b.value_cache, b.block_table,
                              b.query_start_loc, b.seq_lens, b.scale, sliding_window=1000)
    torch.testing.assert_close(out.float(), ref, atol=1e-5, rtol=1e-5)


def test_window_is_an_option_of_the_planner_and_its_plans():
    b = make_batch([40], [(8, 50)], num_q_heads=4, num_kv_heads=1, head_dim=16, block_size=16,
                   dtype=torch.float32)
    for window in (0, -5):
        with pytest.raises(ValueError, match="sliding_window"):
            planner_for(b, sliding_window=window)
    assert planner_for(b).plan(b.query_start_loc, b.seq_lens).sliding_window is None
    assert planner_for(b, sliding_window=7).plan(b.query_start_loc, b.seq_lens).sliding_window == 7


def item_seconds(planner, plan):
    """Each item's estimated time, as plan.py's cost model states it."""
    it = plan.items
    keys = (it[:, F["kv_end"]] - it[:, F["kv_start"]]).astype(np.float64)
    rows = it[:, F["n_tok"]] * it[:, F["nh"]]
    work = np.where(np.arange(len(it)) < plan.num_prefill_items,
                    4 * rows * keys * planner.head_dim / PREFILL_FLOPS_PER_CTA_S,
                    4 * keys * planner.head_dim / DECODE_BYTES_PER_CTA_S)
    return ITEM_SECONDS + work + np.where(it[:, F["num_splits"]] > 1, MERGE_SECONDS, 0.0)


def estimated_seconds(planner, plan):
    """(prefill, decode) CTA-seconds of a plan: item times plus one merge per split group."""
    it = plan.items
    t = item_seconds(planner, plan) - np.where(it[:, F["num_splits"]] > 1, MERGE_SECONDS, 0.0)
    groups = it[:, F["num_splits"]] > 1
    out = []
    for part in (slice(0, plan.num_prefill_items), slice(plan.num_prefill_items, None)):
        merges = len(np.unique(it[part][groups[part], F["merge_id"]]))
        out.append(t[part].sum() + MERGE_SECONDS * merges)
    return out


@pytest.mark.parametrize("window", [None, 16384, 32768], ids=lambda w: f"w{w}")
def test_cost_splits_bound_every_item_by_the_makespan_target(window):
    """With cost_splits no item's estimated time exceeds the target computed from the item-count
    plan, unless not even a SPLIT_ALIGN-key piece of its tile would fit; and they do cut items
    (with windows long enough to leave some items far over the others: shorter ones even them
    out)."""
    rng = np.random.default_rng(7)
    cut = 0
    for _ in range(120):
        shape = dict(num_q_heads=32, num_kv_heads=8, head_dim=128, block_size=16,
                     num_sms=int(rng.choice([16, 132])), ctas_per_sm=int(rng.choice([1, 2])),
                     max_num_reqs=256, max_num_tokens=8192, device="cpu", prefill_rows=128,
                     sliding_window=window)
        qsl, seq = random_lengths(rng, max_reqs=256, long_context=int(rng.choice([20000, 131072])))
        count_planner = PodPlanner(**shape)
        base = count_planner.plan(qsl, seq)
        target = count_planner.makespan_target(*estimated_seconds(count_planner, base))
        base_items = len(base.items)
        planner = PodPlanner(**shape, cost_splits=True)
        plan = planner.plan(qsl, seq)
        check_invariants(None, plan, planner)
        check_coverage(plan, planner, qsl, seq)
        t = item_seconds(planner, plan)
        it = plan.items
        key_s = np.where(np.arange(len(it)) < plan.num_prefill_items,
                         4 * it[:, F["n_tok"]] * it[:, F["nh"]] * 128 / PREFILL_FLOPS_PER_CTA_S,
                         4 * 128 / DECODE_BYTES_PER_CTA_S)
        min_piece = ITEM_SECONDS + MERGE_SECONDS + key_s * (SPLIT_ALIGN + it[:, F["n_tok"]] - 1)
        over = t > target * (1 + 1e-9)
        assert not (over & (min_piece <= target)).any(), (
            f"items over the target {target * 1e6:.1f} us: {t[over] * 1e6}")
        cut += len(it) > base_items
    assert cut >= 10


@pytest.mark.parametrize("window", [None, 32768], ids=lambda w: f"w{w}")
def test_cost_splits_cut_a_long_decode_among_many_items(window):
    # 65 decodes of 2K keys and one of 100K: the item-count and wave rules leave the long decode
    # whole (enough items, two whole waves of the 264 decode teams), about 2.5 ms (0.8 ms with a
    # 32K window) against a makespan target of ~0.2 ms.
    q_len, seq = [1] * 66, [2048] * 65 + [100_000]
    qsl = torch.tensor(np.concatenate([[0], np.cumsum(q_len)]), dtype=torch.int32)
    seq = torch.tensor(seq, dtype=torch.int32)
    shape = dict(num_q_heads=32, num_kv_heads=8, head_dim=128, block_size=16, num_sms=132,
                 ctas_per_sm=2, max_num_reqs=256, max_num_tokens=8192, device="cpu", prefill_rows=128,
                 sliding_window=window)
    whole = PodPlanner(**shape).plan(qsl, seq)
    assert (whole.items[:, F["num_splits"]] == 1).all()
    planner = PodPlanner(**shape, cost_splits=True)
    plan = planner.plan(qsl, seq)
    long = plan.items[plan.items[:, F["req"]] == 65]
    assert (long[:, F["num_splits"]] > 4).all() and (plan.items[plan.items[:, F["req"]] < 65, F["num_splits"]] == 1).all()
    assert item_seconds(planner, plan).max() < 250e-6
    check_invariants(None, plan, planner)
    check_coverage(plan, planner, qsl, seq)


@pytest.mark.parametrize("window", [None, 40000], ids=lambda w: f"w{w}")
@pytest.mark.parametrize("ctas_per_sm", [4, 8])
def test_cost_split_plans_execute_to_reference(ctas_per_sm, window):
    # One long decode holds most of the work (also within a window shorter than it and longer
    # than the rest): with few items and CTA slots, only it is cut.
    b = make_batch([50_000, 40, 17], [(20, 2600), (5, 700)], num_q_heads=8, num_kv_heads=2,
                   head_dim=16, block_size=16, dtype=torch.float32, seed=3)
    planner = planner_for(b, num_sms=1, ctas_per_sm=ctas_per_sm, cost_splits=True,
                          split_items_per_slot={"prefill": 0, "decode": 0}, sliding_window=window)
    plan = planner.plan(b.query_start_loc, b.seq_lens, num_decodes=3)
    assert (plan.items[:, F["num_splits"]] > 1).any()
    check_invariants(b, plan, planner)
    check_coverage(plan, planner, b.query_start_loc, b.seq_lens)
    out, written = execute_plan(b, plan)
    n_tokens = int(b.query_start_loc[-1])
    assert (written[:n_tokens] == 1).all()
    ref = reference_attention(b.query, b.key_cache, b.value_cache, b.block_table,
                              b.query_start_loc, b.seq_lens, b.scale, sliding_window=window)
    torch.testing.assert_close(out[:n_tokens].float(), ref[:n_tokens], atol=1e-5, rtol=1e-5)


def test_planning_never_compiles_after_construction():
    """A planner compiles its core (or loads it from numba's cache) when it is constructed, so
    that no serving step pays for compilation: planning afterwards, from vLLM's int32 host
    lengths or from int64 ones, adds no compiled signature. In a fresh process, where no other
    planner compiled it first."""
    code = """
import torch
from vllm_pod.plan import PodPlanner, _plan_batch
planner = PodPlanner(num_q_heads=32, num_kv_heads=8, head_dim=128, block_size=16, num_sms=132,
                     ctas_per_sm=2, max_num_reqs=256, max_num_tokens=8192, device="cpu")
compiled = set(_plan_batch.signatures)
assert compiled, "constructing the planner compiled nothing"
for dtype in (torch.int32, torch.int64):
    planner.plan(torch.tensor([0, 1, 2, 300], dtype=dtype), torch.tensor([40, 9, 700], dtype=dtype),
                 num_decodes=2)
assert set(_plan_batch.signatures) == compiled, f"planning compiled {_plan_batch.signatures}"
"""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
