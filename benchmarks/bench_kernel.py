"""Kernel benchmark: the fused POD op against vLLM's FlashAttention-3 on hybrid batches.

For each batch of the grid (one prefill chunk with a prefix, plus N decodes) it times, as CUDA-graph
replays (median of many), with Llama-3-8B per-GPU shapes (32 q heads, 8 KV heads, head dim 128,
bf16, block 16, vLLM 0.26's packed K/V cache layout):

    pod          the fused op over the whole batch
    fa3          FA3 as ONE varlen call over the whole batch (what vLLM's FLASH_ATTN backend runs)
    fa3_prefill  FA3 on the prefill request alone
    fa3_decode   FA3 on the decodes alone
    pod_prefill  the POD op on the prefill request alone (its prefill tile's own speed)
    pod_decode   the POD op on the decodes alone

and reports pod/fa3 and pod/ideal, with ideal = max(fa3_prefill, fa3_decode), and how much of its
own two phases POD overlaps: pod / (pod_prefill + pod_decode) is 1 for no overlap and
max(pod_prefill, pod_decode) / (pod_prefill + pod_decode) for a perfect one. Each POD output is
checked against FA3's before timing. Writes a CSV and a JSON summary; plot with plot_kernel.py.

    python -m benchmarks.bench_kernel --out benchmarks/results/kernel_h100.csv
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import statistics
import time

import torch

from vllm_pod.ops import pod_attention
from vllm_pod.plan import PodPlanner
from vllm_pod.testing import Batch, device_planner, make_batch, plan_batch, sub_batch

SHAPE = dict(num_q_heads=32, num_kv_heads=8, head_dim=128, block_size=16, dtype=torch.bfloat16)
CHUNKS = (512, 1024, 2048)
PREFIXES = (0, 4096, 12288)
NUM_DECODES = (16, 64, 128)
DECODE_CTX = (2048, 8192)


def time_graph(fn, iters: int) -> float:
    """Median microseconds of one replay of a CUDA graph that captured fn()."""
    fn()  # warm-up outside capture (module load, FA3's first-call setup)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    for _ in range(3):
        graph.replay()
    start = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    end = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for s, e in zip(start, end):
        s.record()
        graph.replay()
        e.record()
    torch.cuda.synchronize()
    return 1000 * statistics.median(s.elapsed_time(e) for s, e in zip(start, end))


class FA3:
    """vLLM's FA3 call as its FLASH_ATTN backend makes it (AOT scheduler metadata, paged KV)."""

    def __init__(self, b: Batch):
        from vllm.vllm_flash_attn import flash_attn_varlen_func, get_scheduler_metadata
        self.fn = flash_attn_varlen_func
        self.q = b.query
        self.out = torch.empty_like(self.q)
        self.k, self.v = b.key_cache, b.value_cache
        self.cu_q = b.query_start_loc
        self.seqused_k = b.seq_lens
        self.block_table = b.block_table
        q_lens = self.cu_q[1:] - self.cu_q[:-1]
        self.max_q, self.max_k = int(q_lens.max()), int(self.seqused_k.max())
        self.scale = b.scale
        self.meta = get_scheduler_metadata(
            batch_size=len(self.seqused_k), max_seqlen_q=self.max_q, max_seqlen_k=self.max_k,
            num_heads_q=b.query.shape[1], num_heads_kv=b.key_cache.shape[2],
            headdim=b.query.shape[2], cache_seqlens=self.seqused_k, qkv_dtype=b.query.dtype,
            cu_seqlens_q=self.cu_q, page_size=b.key_cache.shape[1], causal=True)

    def __call__(self):
        self.fn(q=self.q, k=self.k, v=self.v, out=self.out, cu_seqlens_q=self.cu_q,
                max_seqlen_q=self.max_q, seqused_k=self.seqused_k, max_seqlen_k=self.max_k,
                softmax_scale=self.scale, causal=True, block_table=self.block_table,
                scheduler_metadata=self.meta, fa_version=3)
        return self.out


def hybrid_batch(chunk, prefix, n_dec, dec_ctx):
    """One prefill chunk after `prefix` tokens plus n_dec decodes of dec_ctx, SHAPE, on the GPU."""
    return make_batch([dec_ctx] * n_dec, [(chunk, prefix + chunk)], device="cuda",
                      seed=chunk + prefix + n_dec, **SHAPE)


def write_csv(path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def pod_call(b, plan, out):
    """POD's op on batch b under plan, into out: a callable to time or capture."""
    return lambda: pod_attention(out, b.query, b.key_cache, b.value_cache, b.block_table, plan, b.scale)


def max_abs_diff(a, b) -> float:
    return float((a.float() - b.float()).abs().max())


def bench_config(chunk, prefix, n_dec, dec_ctx, planner_options: dict, iters):
    b = hybrid_batch(chunk, prefix, n_dec, dec_ctx)
    parts = {"": b, "_prefill": sub_batch(b, slice(n_dec, n_dec + 1)), "_decode": sub_batch(b, slice(0, n_dec))}
    t, plans, err = {}, {}, 0.0
    for suffix, part in parts.items():
        # Each part gets its own planner: a plan lives in its planner's buffers, which a CUDA
        # graph captures by address.
        plans[suffix] = plan_batch(new_planner(**planner_options), part)
        out = torch.full_like(part.query, float("nan"))
        run_pod = pod_call(part, plans[suffix], out)
        fa3 = FA3(part)
        run_pod()
        diff = max_abs_diff(out, fa3())
        if not diff < 3e-2:
            raise AssertionError(f"POD{suffix} differs from FA3 by {diff} at chunk={chunk} prefix={prefix} "
                                 f"decodes={n_dec}x{dec_ctx}")
        err = max(err, diff)
        t["pod" + suffix], t["fa3" + suffix] = time_graph(run_pod, iters), time_graph(fa3, iters)
    ideal = max(t["fa3_prefill"], t["fa3_decode"])
    pod_serial = t["pod_prefill"] + t["pod_decode"]
    prefill_flops = 4 * chunk * (prefix + (chunk + 1) / 2) * SHAPE["head_dim"] * SHAPE["num_q_heads"]
    decode_bytes = 2 * n_dec * dec_ctx * SHAPE["num_kv_heads"] * SHAPE["head_dim"] * 2
    plan = plans[""]
    return dict(chunk=chunk, prefix=prefix, decodes=n_dec, decode_ctx=dec_ctx,
                prefill_items=plan.num_prefill_items, decode_items=plan.num_decode_items,
                decode_slots_per_sm=plan.decode_slots_per_sm,
                pod_us=t["pod"], fa3_us=t["fa3"], fa3_prefill_us=t["fa3_prefill"],
                fa3_decode_us=t["fa3_decode"], ideal_us=ideal,
                pod_over_fa3=t["pod"] / t["fa3"], pod_over_ideal=t["pod"] / ideal,
                fa3_over_ideal=t["fa3"] / ideal,
                prefill_tflops_fa3_alone=prefill_flops / t["fa3_prefill"] / 1e6,
                decode_tbps_fa3_alone=decode_bytes / t["fa3_decode"] / 1e6,
                pod_prefill_us=t["pod_prefill"], pod_decode_us=t["pod_decode"],
                pod_over_own_serial=t["pod"] / pod_serial,
                own_perfect_overlap=max(t["pod_prefill"], t["pod_decode"]) / pod_serial,
                prefill_tflops_pod_alone=prefill_flops / t["pod_prefill"] / 1e6,
                decode_tbps_pod_alone=decode_bytes / t["pod_decode"] / 1e6, max_abs_err_vs_fa3=err)


def new_planner(**options) -> PodPlanner:
    """A planner for SHAPE on the current GPU, as the backend makes one."""
    return device_planner(**SHAPE, max_num_reqs=256, max_num_tokens=4096, **options)


def pod_times(chunk, prefix, n_dec, dec_ctx, planners, iters):
    """POD's time alone under each planner (tuning: no vLLM needed; correctness is the tests' job)."""
    b = hybrid_batch(chunk, prefix, n_dec, dec_ctx)
    out = torch.full_like(b.query, float("nan"))
    return [time_graph(pod_call(b, plan_batch(planner, b), out), iters) for planner in planners]


def parse_planner(text: str) -> dict[str, int]:
    """'prefill=2,min_decode_slots=0' -> {'prefill': 2, 'min_decode_slots': 0}"""
    return {k: int(v) for k, v in (kv.split("=") for kv in text.split(","))}


def planner_kwargs(opts: dict[str, int] | None) -> dict:
    """PodPlanner arguments from --planner options (prefill/decode: KV-split items per CTA slot)."""
    opts = dict(opts or {})
    split = {kind: opts.pop(kind) for kind in ("prefill", "decode") if kind in opts}
    return dict(split_items_per_slot=split or None, **opts)


def geomean(xs):
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="CSV path; a .json summary is written beside it")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--stride", type=int, default=1, help="time every STRIDE-th config only")
    ap.add_argument("--pod-only", action="store_true", help="time POD alone and print; no FA3, no files")
    ap.add_argument("--only", metavar="CHUNK,PREFIX,DECODES,CTX",
                    help="this one batch instead of the grid (decodes may be 0 with --pod-only); "
                         "with a profiler: ncu -k regex:pod_attention -c 1 python -m ... --pod-only --only ...")
    ap.add_argument("--planner", action="append", type=parse_planner, metavar="KEY=N,...",
                    help="planner options: prefill=N / decode=N (KV-split items per CTA slot), "
                         "min_decode_slots=N; with --pod-only, repeat it to time each planner on the "
                         "same batches")
    args = ap.parse_args()
    if args.planner and len(args.planner) > 1 and not args.pod_only:
        ap.error("several --planner options need --pod-only")

    props = torch.cuda.get_device_properties(0)
    planner_options = [planner_kwargs(opts) for opts in args.planner or [None]]
    planners = [new_planner(**options) for options in planner_options]
    planner = planners[0]
    grid = list(itertools.product(CHUNKS, PREFIXES, NUM_DECODES, DECODE_CTX))
    grid = [tuple(int(x) for x in args.only.split(","))] if args.only else grid[::args.stride]
    if args.pod_only:
        names = [",".join(f"{k}={v}" for k, v in (o or {}).items()) or "default" for o in args.planner or [None]]
        times = [pod_times(*cfg, planners, args.iters) for cfg in grid]
        for cfg, ts in zip(grid, times):
            print(f"chunk={cfg[0]:5d} prefix={cfg[1]:5d} dec={cfg[2]:3d}x{cfg[3]:5d}  pod us "
                  + "  ".join(f"{n} {t:8.1f}" for n, t in zip(names, ts)))
        print(f"prefill rows {planner.prefill_rows}: geomean pod_us "
              + "  ".join(f"{n} {geomean([ts[i] for ts in times]):.1f}" for i, n in enumerate(names)))
        return
    rows = []
    for i, cfg in enumerate(grid):
        rows.append(bench_config(*cfg, planner_options[0], args.iters))
        r = rows[-1]
        print(f"[{i + 1}/{len(grid)}] chunk={r['chunk']:5d} prefix={r['prefix']:5d} "
              f"dec={r['decodes']:3d}x{r['decode_ctx']:5d}  pod {r['pod_us']:8.1f}us  fa3 {r['fa3_us']:8.1f}us  "
              f"ideal {r['ideal_us']:8.1f}us  pod/fa3 {r['pod_over_fa3']:.3f}  pod/ideal {r['pod_over_ideal']:.3f}  "
              f"pod/own serial {r['pod_over_own_serial']:.3f} (perfect {r['own_perfect_overlap']:.3f})",
              flush=True)
    write_csv(args.out, rows)
    worst = max(rows, key=lambda r: r["pod_over_fa3"])
    summary = dict(
        gpu=props.name, date=time.strftime("%Y-%m-%d"), torch=torch.__version__,
        shape={k: str(v) for k, v in SHAPE.items()}, ctas_per_sm=planner.ctas_per_sm,
        prefill_tile_rows=planner.prefill_rows, split_targets=planner.split_targets,
        min_decode_slots=planner.min_decode_slots,
        configs=len(rows), geomean_pod_over_fa3=geomean([r["pod_over_fa3"] for r in rows]),
        geomean_pod_over_ideal=geomean([r["pod_over_ideal"] for r in rows]),
        geomean_fa3_over_ideal=geomean([r["fa3_over_ideal"] for r in rows]),
        geomean_pod_over_own_serial=geomean([r["pod_over_own_serial"] for r in rows]),
        geomean_own_perfect_overlap=geomean([r["own_perfect_overlap"] for r in rows]),
        best_pod_over_fa3=min(r["pod_over_fa3"] for r in rows), worst=worst)
    with open(args.out.rsplit(".", 1)[0] + ".json", "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps({k: v for k, v in summary.items() if k != "worst"}, indent=1))
    print("worst:", {k: worst[k] for k in ("chunk", "prefix", "decodes", "decode_ctx", "pod_us", "fa3_us",
                                           "pod_over_fa3")})


if __name__ == "__main__":
    main()
