"""Per-item timeline of one POD launch, read from a trace build (csrc/pod/trace.cuh).

Nsight Compute sums over the whole launch; this says what each work item cost and when it ran:
a CTA's prefill rate against the item's size, decode bandwidth per CTA, how busy the CTAs were
over the launch and how long the tail was, and whether each kind runs slower while the other
kind runs beside it on the same SM (contention) than alone. For batches of the kernel benchmark's grid:

    POD_NVCC_FLAGS=-DPOD_TRACE=1 python setup.py build_ext --inplace
    python -m benchmarks.kernel.trace_items --only 512,4096,16,2048 --only 2048,12288,16,2048 --csv items.csv

The numbers come from the GPU's global timer (its resolution may be as coarse as 1 us), on one
warm launch outside a CUDA graph; durations include each item's merge when it ends a KV-split.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from benchmarks.kernel.bench import (SHAPE, hybrid_batch, new_planner, parse_planner, planner_kwargs,
                                     pod_call, write_csv)
from vllm_pod.plan import ITEM_FIELDS, ITEM_INTS, MAX_SM_IDS, PLAN_HEADER_INTS, TRACE_FIELDS
from vllm_pod.testing import plan_batch

FIELDS = ITEM_FIELDS + TRACE_FIELDS
KEY_BINS = (512, 2048, 8192)


def item_table(items: np.ndarray, num_prefill: int, head_dim: int) -> dict[str, np.ndarray]:
    """Columns per item: kind, CTA, SM, start/end (us from the first start), work (FLOPs of the
    causal rows for prefill items, K/V bytes for decode items) and keys."""
    col = {name: items[:, i].astype(np.int64) for i, name in enumerate(FIELDS)}
    if not col["trace_end"].any():
        raise RuntimeError("no trace in the plan buffer: build with POD_NVCC_FLAGS=-DPOD_TRACE=1")
    # Timer values modulo 2^32, as signed offsets from the first item's start (a launch is far
    # shorter than the 2 s either way this allows), then shifted to the earliest start.
    rel = lambda ns: ((ns - col["trace_start"][0] + 2**31) & 0xFFFFFFFF) - 2**31
    t0 = rel(col["trace_start"]).min()
    start_us = (rel(col["trace_start"]) - t0) / 1e3
    end_us = (rel(col["trace_end"]) - t0) / 1e3
    keys = col["kv_end"] - col["kv_start"]
    is_prefill = np.arange(len(items)) < num_prefill
    # Causal FLOPs of a prefill item: each of its rows (token t, head h) sees the keys of the item's
    # range up to its own position.
    work = np.zeros(len(items))
    for i in np.flatnonzero(is_prefill):
        pos = col["q_pos0"][i] + np.arange(col["n_tok"][i])
        seen = np.clip(np.minimum(col["kv_end"][i], pos + 1) - col["kv_start"][i], 0, None)
        work[i] = 4.0 * head_dim * col["nh"][i] * seen.sum()
    work[~is_prefill] = keys[~is_prefill] * 2 * head_dim * 2  # one KV head's K and V, 2-byte elements
    sm = col["trace_cta_sm"] % MAX_SM_IDS
    return dict(kind=np.where(is_prefill, "prefill", "decode"), cta=col["trace_cta_sm"] // MAX_SM_IDS,
                sm=sm, start_us=start_us, end_us=end_us, keys=keys, work=work,
                shared=shared_fraction(is_prefill, sm, start_us, end_us))


def shared_fraction(is_prefill, sm, start_us, end_us) -> np.ndarray:
    """Per item, the fraction of its time during which items of the other kind ran on its SM."""
    out = np.zeros(len(sm))
    for s in np.unique(sm):
        idx = np.flatnonzero(sm == s)
        for i in idx:
            other = idx[is_prefill[idx] != is_prefill[i]]
            both = np.minimum(end_us[i], end_us[other]) - np.maximum(start_us[i], start_us[other])
            dur = end_us[i] - start_us[i]
            out[i] = min(1.0, both.clip(min=0).sum() / dur) if dur > 0 else 0.0
    return out


def summarize(t: dict[str, np.ndarray], num_ctas: int) -> list[str]:
    span = t["end_us"].max()
    dur = t["end_us"] - t["start_us"]
    lines = [f"span {span:.1f} us on {num_ctas} CTAs; CTA-time busy {dur.sum() / (span * num_ctas):.0%}"]
    for kind, unit, scale in (("prefill", "TFLOP/s", 1e6), ("decode", "GB/s", 1e3)):
        sel = t["kind"] == kind
        if not sel.any():
            continue
        rate = lambda m: t["work"][m].sum() / dur[m].sum() / scale
        bins = []
        lo = 0
        for hi in KEY_BINS + (1 << 30,):
            m = sel & (t["keys"] > lo) & (t["keys"] <= hi)
            if m.any():
                bins.append(f"keys <= {hi if hi < 1 << 30 else 'max'}: {rate(m):.2f} ({m.sum()})")
            lo = hi
        lines.append(f"{kind}: {sel.sum()} items, {dur[sel].sum():.0f} CTA-us, per CTA {rate(sel):.2f} {unit}; "
                     + "; ".join(bins))
        lines.append(f"  first start {t['start_us'][sel].min():.1f} us, last start {t['start_us'][sel].max():.1f}, "
                     f"last end {t['end_us'][sel].max():.1f}; item duration min/median/max "
                     f"{dur[sel].min():.1f}/{np.median(dur[sel]):.1f}/{dur[sel].max():.1f} us")
        # Items of similar size, with and without the other kind beside them: a lower rate when
        # shared means the kinds contend for the SM (or its memory path) instead of overlapping.
        big = sel & (t["keys"] >= np.median(t["keys"][sel]))
        mostly = {"beside the other kind": big & (t["shared"] >= 0.5), "alone": big & (t["shared"] < 0.5)}
        lines.append("  items of at least the median keys, per CTA: " + "; ".join(
            f"{name} {rate(m):.2f} {unit} ({m.sum()})" for name, m in mostly.items() if m.any()))
    edges = np.linspace(0, span, 11)
    mid = (edges[:-1] + edges[1:]) / 2
    active = {kind: [int(((t["kind"] == kind) & (t["start_us"] <= m) & (t["end_us"] > m)).sum()) for m in mid]
              for kind in ("prefill", "decode")}
    lines.append("CTAs running prefill / decode items at each tenth of the span: "
                 + " ".join(f"{p}/{d}" for p, d in zip(active["prefill"], active["decode"])))
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", required=True, metavar="CHUNK,PREFIX,DECODES,CTX")
    ap.add_argument("--planner", type=parse_planner, metavar="KEY=N,...", help="as the kernel benchmark's")
    ap.add_argument("--csv", help="write every item's row here")
    args = ap.parse_args()
    planner = new_planner(**planner_kwargs(args.planner))
    rows = []
    for spec in args.only:
        chunk, prefix, n_dec, ctx = (int(x) for x in spec.split(","))
        b = hybrid_batch(chunk, prefix, n_dec, ctx)
        plan = plan_batch(planner, b)
        run_pod = pod_call(b, plan, torch.empty_like(b.query))
        for _ in range(3):  # the last, warm launch leaves its trace
            run_pod()
        torch.cuda.synchronize()
        n = plan.num_prefill_items + plan.num_decode_items
        items = plan.buffer[PLAN_HEADER_INTS:PLAN_HEADER_INTS + n * ITEM_INTS].view(n, ITEM_INTS).cpu().numpy()
        t = item_table(items, plan.num_prefill_items, SHAPE["head_dim"])
        print(f"chunk={chunk} prefix={prefix} decodes={n_dec}x{ctx}:")
        for line in summarize(t, plan.num_sms * plan.ctas_per_sm):
            print("  " + line)
        rows += [dict(batch=spec, **{k: v[i] for k, v in t.items()}) for i in range(n)]
    if args.csv:
        write_csv(args.csv, rows)


if __name__ == "__main__":
    main()
