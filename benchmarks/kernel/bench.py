"""Kernel benchmark: the fused POD op against vLLM's FlashAttention-3 on hybrid batches.

For each batch it times, as CUDA-graph replays (median of many), bf16, vLLM 0.26's packed K/V
cache layout:

    pod          the fused op over the whole batch
    fa3          FA3 as ONE varlen call over the whole batch (what vLLM's FLASH_ATTN backend runs)
    fa3_prefill  FA3 on the prefill requests alone
    fa3_decode   FA3 on the decodes alone
    pod_prefill  the POD op on the prefill requests alone (its prefill tile's own speed)
    pod_decode   the POD op on the decodes alone

and reports pod/fa3 and pod/ideal, with ideal = max(fa3_prefill, fa3_decode), and how much of its
own two phases POD overlaps: pod / (pod_prefill + pod_decode) is 1 for no overlap and
max(pod_prefill, pod_decode) / (pod_prefill + pod_decode) for a perfect one. Each POD output is
checked against FA3's before timing. Writes a CSV and a JSON summary; plot with
benchmarks/kernel/plot.py.

Four batch lists:
- the grid (default): Llama-3-8B per-GPU shapes (32 q heads, 8 KV heads, head dim 128, block 16),
  one prefill chunk of 512/1024/2048 tokens after a prefix of 0/4096/12288 beside 16/64/128
  decodes of 2048/8192 tokens;
- the wide table (--wide): several prefill chunks in one batch, decode contexts up to 128K beside
  a long prefill, GQA ratios 1/4/7/8, head dims 64 and 256, KV blocks 32 and 64, and the per-rank
  shapes of Llama-3-70B under tensor parallelism 2 and 4;
- the feature table (--features): the attention layers of the families that need a sliding window,
  a logits soft-cap, attention sinks or head dim 96, at their shapes, with FA3 given the same
  features;
- the verify table (--verify): speculative decoding's verify steps of 2 to 8 tokens (placed after
  the decodes, as vLLM orders them) beside one-token decodes, at GQA 4 and 8, some with a prefill
  chunk.

With --kv-cache-dtype fp8 every list runs on an e4m3 KV cache and query (per-tensor descales, as
vLLM quantizes them) against FA3's fp8 path; --fp8-decode times decodes alone at 8K to 128K
tokens, POD and FA3 each on a bf16 and an fp8 cache, beside a kernel that only reads the same pages
(paged_read.py: the ceiling the paged layout sets).

    python -m benchmarks.kernel.bench --out benchmarks/results/kernel_h200.csv
    python -m benchmarks.kernel.bench --wide --out benchmarks/results/kernel_wide_h200.csv
    python -m benchmarks.kernel.bench --features --out benchmarks/results/kernel_features_h200.csv
    python -m benchmarks.kernel.bench --verify --out benchmarks/results/kernel_verify_h200.csv
    python -m benchmarks.kernel.bench --kv-cache-dtype fp8 --out benchmarks/results/kernel_fp8_h200.csv
    python -m benchmarks.kernel.bench --fp8-decode --out benchmarks/results/kernel_fp8_decode_h200.csv
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import statistics
import time
from dataclasses import dataclass, field

import torch

from vllm_pod.ops import pod_attention
from vllm_pod.plan import PodPlanner
from vllm_pod.testing import Batch, device_planner, make_batch, plan_batch, quantize_fp8, sub_batch

SHAPE = dict(num_q_heads=32, num_kv_heads=8, head_dim=128, block_size=16, dtype=torch.bfloat16)
CHUNKS = (512, 1024, 2048)
PREFIXES = (0, 4096, 12288)
NUM_DECODES = (16, 64, 128)
DECODE_CTX = (2048, 8192)


@dataclass
class HybridBatch:
    """A batch to time: prefill chunks as (chunk, prefix) pairs beside decodes (their contexts).

    columns: how the batch is named in the CSV (the grid keeps its four axes as columns)."""

    prefills: list[tuple[int, int]]
    decodes: list[int]
    shape: dict = field(default_factory=lambda: dict(SHAPE))
    columns: dict = field(default_factory=dict)
    # The layer's attention features: sliding_window, logits_soft_cap, sinks (True: random ones).
    features: dict = field(default_factory=dict)
    fp8: bool = False  # an e4m3 KV cache and query

    @property
    def cache_dtype(self) -> torch.dtype:
        return torch.float8_e4m3fn if self.fp8 else self.shape["dtype"]

    @property
    def num_tokens(self) -> int:
        return len(self.decodes) + sum(chunk for chunk, _ in self.prefills)

    @property
    def prefill_flops(self) -> float:
        """Causal attention FLOPs of the prefill chunks (QK^T and PV, 2 FLOPs per multiply-add)."""
        s = self.shape
        return sum(4 * c * (p + (c + 1) / 2) for c, p in self.prefills) * s["head_dim"] * s["num_q_heads"]

    @property
    def decode_bytes(self) -> float:
        """K and V bytes the decodes read."""
        s = self.shape
        return 2 * sum(self.decodes) * s["num_kv_heads"] * s["head_dim"] * (1 if self.fp8 else 2)

    def make(self, device="cuda") -> Batch:
        """The batch, decodes first (as vLLM orders them), random values seeded by its size."""
        seed = sum(c + p for c, p in self.prefills) + len(self.decodes)
        b = make_batch(self.decodes, [(c, p + c) for c, p in self.prefills], device=device, seed=seed,
                       **self.shape)
        return quantize_fp8(b, per_head=False, seed=seed) if self.fp8 else b

    def op_features(self) -> dict:
        """The op's options for this batch: sinks become one bf16 logit per query head (what FA3
        takes), drawn the same for every call."""
        options = dict(self.features)
        if options.pop("sinks", False):
            gen = torch.Generator(device="cuda").manual_seed(0)
            options["sinks"] = (torch.randn(self.shape["num_q_heads"], generator=gen, device="cuda")
                                + 2).to(torch.bfloat16)
        return options


def grid_batch(chunk, prefix, n_dec, dec_ctx) -> HybridBatch:
    return HybridBatch([(chunk, prefix)] if chunk else [], [dec_ctx] * n_dec,
                       columns=dict(chunk=chunk, prefix=prefix, decodes=n_dec, decode_ctx=dec_ctx))


def grid(stride: int = 1) -> list[HybridBatch]:
    return [grid_batch(*cfg) for cfg in itertools.product(CHUNKS, PREFIXES, NUM_DECODES, DECODE_CTX)][::stride]


def wide_batch(name, prefills, decodes, num_q_heads=32, num_kv_heads=8, head_dim=128, block_size=16,
               features=None):
    """A batch of the wide or the feature table; decodes as (count, context) pairs."""
    shape = dict(num_q_heads=num_q_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                 block_size=block_size, dtype=torch.bfloat16)
    features = features or {}
    return HybridBatch(list(prefills), [ctx for n, ctx in decodes for _ in range(n)], shape, dict(
        batch=name, q_heads=num_q_heads, kv_heads=num_kv_heads, head_dim=head_dim, block_size=block_size,
        prefills=" ".join(f"{c}@{p}" for c, p in prefills),
        decodes=" ".join(f"{n}x{ctx}" for n, ctx in decodes),
        features=" ".join(f"{k}={v}" for k, v in features.items())), features)


# One long prefill with few decodes (where POD's prefill tile decides) and a balanced batch (where
# the overlap pays), for each shape axis that the grid holds fixed.
PREFILL_HEAVY = dict(prefills=[(2048, 12288)], decodes=[(16, 2048)])
BALANCED = dict(prefills=[(1024, 4096)], decodes=[(128, 8192)])


def wide_batches() -> list[HybridBatch]:
    batches = [
        wide_batch("3 chunks beside 64 decodes", [(1024, 0), (1024, 4096), (1024, 12288)], [(64, 4096)]),
        wide_batch("4 chunks beside 128 decodes", [(512, 0)] * 4, [(128, 2048)]),
        wide_batch("8 short chunks beside 16 decodes", [(256, 8192)] * 8, [(16, 8192)]),
        wide_batch("2 chunks beside mixed decodes", [(2048, 0), (512, 16384)], [(32, 1024), (32, 16384)]),
        wide_batch("long prefill beside 32K decodes", [(2048, 12288)], [(16, 32768)]),
        wide_batch("long prefill beside 64K decodes", [(2048, 32768)], [(16, 65536)]),
        wide_batch("long prefill beside 128K decodes", [(2048, 12288)], [(8, 131072)]),
        wide_batch("short prefill beside 128K decodes", [(512, 0)], [(4, 131072)]),
    ]
    axes = [("GQA 1 (8/8 heads)", dict(num_q_heads=8, num_kv_heads=8)),
            ("GQA 4 (32/8 heads)", dict(num_q_heads=32, num_kv_heads=8)),
            ("GQA 7 (28/4 heads)", dict(num_q_heads=28, num_kv_heads=4)),
            ("GQA 8 (64/8 heads)", dict(num_q_heads=64, num_kv_heads=8)),
            ("head dim 64", dict(head_dim=64)),
            ("head dim 256", dict(head_dim=256)),
            ("KV block 32", dict(block_size=32)),
            ("KV block 64", dict(block_size=64)),
            ("Llama-3-70B TP=2 (32/4 heads)", dict(num_q_heads=32, num_kv_heads=4)),
            ("Llama-3-70B TP=4 (16/2 heads)", dict(num_q_heads=16, num_kv_heads=2))]
    for name, shape in axes:
        batches.append(wide_batch(f"{name}, prefill-heavy", **PREFILL_HEAVY, **shape))
        batches.append(wide_batch(f"{name}, balanced", **BALANCED, **shape))
    return batches


# The attention layers of the families that need the features (per-GPU shapes of the real models).
FAMILY_LAYERS = [
    ("Mistral-7B-v0.1 (window 4096)", dict(num_q_heads=32, num_kv_heads=8, head_dim=128),
     dict(sliding_window=4096)),
    ("Gemma-2-9B local (window 4096, soft-cap 50)", dict(num_q_heads=16, num_kv_heads=8, head_dim=256),
     dict(sliding_window=4096, logits_soft_cap=50.0)),
    ("Gemma-2-9B global (soft-cap 50)", dict(num_q_heads=16, num_kv_heads=8, head_dim=256),
     dict(logits_soft_cap=50.0)),
    ("Gemma-3-27B local (window 1024)", dict(num_q_heads=32, num_kv_heads=16, head_dim=128),
     dict(sliding_window=1024)),
    ("gpt-oss-120b local (window 128, sinks)", dict(num_q_heads=64, num_kv_heads=8, head_dim=64),
     dict(sliding_window=128, sinks=True)),
    ("gpt-oss-120b global (sinks)", dict(num_q_heads=64, num_kv_heads=8, head_dim=64),
     dict(sinks=True)),
    ("Phi-3-mini (head dim 96)", dict(num_q_heads=32, num_kv_heads=32, head_dim=96), dict()),
]


# Speculative decoding's verify steps (1 + K tokens of a request, placed by vLLM after the one-token
# decodes, as prefill chunks) beside the decodes of requests without a draft: GQA 4 and 8, so that
# some steps fit a decode tile (tokens x GQA group <= 16 rows) and some take a prefill tile.
VERIFY_TOKENS = {4: (2, 4, 5, 8), 8: (2, 4)}


def verify_batches() -> list[HybridBatch]:
    batches = []
    for group, tokens in VERIFY_TOKENS.items():
        shape = dict(num_q_heads=8 * group, num_kv_heads=8)
        for n in tokens:
            batches.append(wide_batch(f"GQA {group}: 32 verify steps of {n} tokens beside 32 decodes, 8K",
                                      [(n, 8192)] * 32, [(32, 8192)], **shape))
    batches += [
        wide_batch("GQA 4: 16 verify steps of 8 tokens beside 16 decodes, 32K", [(8, 32768)] * 16, [(16, 32768)]),
        wide_batch("GQA 4: 32 verify steps of 4 tokens and a 1024 chunk beside 32 decodes, 8K",
                   [(4, 8192)] * 32 + [(1024, 4096)], [(32, 8192)]),
        wide_batch("GQA 4: 32 verify steps of 8 tokens and a 1024 chunk beside 32 decodes, 8K",
                   [(8, 8192)] * 32 + [(1024, 4096)], [(32, 8192)]),
    ]
    return batches


def feature_batches() -> list[HybridBatch]:
    return [wide_batch(f"{name}, {kind}", **batch, **shape, features=features)
            for name, shape, features in FAMILY_LAYERS
            for kind, batch in (("prefill-heavy", PREFILL_HEAVY), ("balanced", BALANCED))]


WARMUP_S = 0.05


def time_graph(fn, iters: int) -> float:
    """Median microseconds of one replay of a CUDA graph that captured fn()."""
    fn()  # warm-up outside capture (module load, FA3's first-call setup)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    # Replays for WARMUP_S first: the first tens of replays over a freshly made batch ran up to 10%
    # slower than later ones (fp8 decodes on an H200), which favoured whatever was timed second.
    start_s, n = time.perf_counter(), 0
    while n < 3 or time.perf_counter() - start_s < WARMUP_S:
        graph.replay()
        torch.cuda.synchronize()
        n += 1
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

    def __init__(self, b: Batch, sliding_window=None, logits_soft_cap=None, sinks=None):
        from vllm.vllm_flash_attn import flash_attn_varlen_func, get_scheduler_metadata
        self.fn = flash_attn_varlen_func
        self.q = b.query
        self.out = b.out_like()
        self.k, self.v = b.key_cache, b.value_cache
        self.cu_q = b.query_start_loc
        self.seqused_k = b.seq_lens
        self.block_table = b.block_table
        # An fp8 cache: FLASH_ATTN's descales, expanded to (requests, KV heads).
        self.descales = {}
        if b.descales is not None:
            shape = (len(b.seq_lens), b.key_cache.shape[2])
            self.descales = {name: d.expand(shape) for name, d in
                             zip(("q_descale", "k_descale", "v_descale"), b.descales)}
        q_lens = self.cu_q[1:] - self.cu_q[:-1]
        self.max_q, self.max_k = int(q_lens.max()), int(self.seqused_k.max())
        self.scale = b.scale
        # As FLASH_ATTN's impl passes the layer's features.
        self.window = (sliding_window - 1, 0) if sliding_window else (-1, -1)
        self.softcap, self.sinks = logits_soft_cap or 0.0, sinks
        self.meta = get_scheduler_metadata(
            batch_size=len(self.seqused_k), max_seqlen_q=self.max_q, max_seqlen_k=self.max_k,
            num_heads_q=b.query.shape[1], num_heads_kv=b.key_cache.shape[2],
            headdim=b.query.shape[2], cache_seqlens=self.seqused_k, qkv_dtype=b.query.dtype,
            cu_seqlens_q=self.cu_q, page_size=b.key_cache.shape[1], causal=True,
            window_size=self.window, has_softcap=self.softcap > 0)

    def __call__(self):
        self.fn(q=self.q, k=self.k, v=self.v, out=self.out, cu_seqlens_q=self.cu_q,
                max_seqlen_q=self.max_q, seqused_k=self.seqused_k, max_seqlen_k=self.max_k,
                softmax_scale=self.scale, causal=True, block_table=self.block_table,
                window_size=self.window, softcap=self.softcap, s_aux=self.sinks,
                scheduler_metadata=self.meta, fa_version=3, **self.descales)
        return self.out


def hybrid_batch(chunk, prefix, n_dec, dec_ctx) -> Batch:
    """One prefill chunk after `prefix` tokens plus n_dec decodes of dec_ctx, SHAPE, on the GPU."""
    return grid_batch(chunk, prefix, n_dec, dec_ctx).make()


def write_csv(path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def write_results(path, rows: list[dict], summary: dict) -> None:
    """rows as the CSV at path, summary as the JSON beside it."""
    write_csv(path, rows)
    with open(path.rsplit(".", 1)[0] + ".json", "w") as f:
        json.dump(summary, f, indent=2)


def pod_call(b, plan, out, **features):
    """POD's op on batch b under plan, into out (features: the op's options): a callable to time
    or capture."""
    return lambda: pod_attention(out, b.query, b.key_cache, b.value_cache, b.block_table, plan, b.scale,
                                 **b.fp8_options(), **features)


def max_abs_diff(a, b) -> float:
    return float((a.float() - b.float()).abs().max())


def bench_batch(spec: HybridBatch, planner_options: dict, iters: int) -> dict:
    """One CSV row: POD and FA3 on the whole batch and on each phase alone."""
    b = spec.make()
    n_dec, n_reqs = len(spec.decodes), len(spec.decodes) + len(spec.prefills)
    parts = {"": b, "_prefill": sub_batch(b, slice(n_dec, n_reqs)), "_decode": sub_batch(b, slice(0, n_dec))}
    t, plans, err = {}, {}, 0.0
    features = spec.op_features()
    for suffix, part in parts.items():
        # Each part gets its own planner: a plan lives in its planner's buffers, which a CUDA
        # graph captures by address.
        plans[suffix] = plan_batch(new_planner(spec, **planner_options), part)
        out = part.out_like()
        run_pod = pod_call(part, plans[suffix], out, **features)
        fa3 = FA3(part, **features)
        run_pod()
        diff = max_abs_diff(out, fa3())
        # FA3's fp8 path rounds probabilities to e4m3 (POD to fp16): a looser bound there.
        if not diff < (1e-1 if spec.fp8 else 3e-2):
            raise AssertionError(f"POD{suffix} differs from FA3 by {diff} on {spec.columns}")
        err = max(err, diff)
        t["pod" + suffix], t["fa3" + suffix] = time_graph(run_pod, iters), time_graph(fa3, iters)
    ideal = max(t["fa3_prefill"], t["fa3_decode"])
    pod_serial = t["pod_prefill"] + t["pod_decode"]
    plan = plans[""]
    return dict(**spec.columns,
                prefill_items=plan.num_prefill_items, decode_items=plan.num_decode_items,
                decode_slots_per_sm=plan.decode_slots_per_sm,
                pod_us=t["pod"], fa3_us=t["fa3"], fa3_prefill_us=t["fa3_prefill"],
                fa3_decode_us=t["fa3_decode"], ideal_us=ideal,
                pod_over_fa3=t["pod"] / t["fa3"], pod_over_ideal=t["pod"] / ideal,
                fa3_over_ideal=t["fa3"] / ideal,
                prefill_tflops_fa3_alone=spec.prefill_flops / t["fa3_prefill"] / 1e6,
                decode_tbps_fa3_alone=spec.decode_bytes / t["fa3_decode"] / 1e6,
                pod_prefill_us=t["pod_prefill"], pod_decode_us=t["pod_decode"],
                pod_over_own_serial=t["pod"] / pod_serial,
                own_perfect_overlap=max(t["pod_prefill"], t["pod_decode"]) / pod_serial,
                prefill_tflops_pod_alone=spec.prefill_flops / t["pod_prefill"] / 1e6,
                decode_tbps_pod_alone=spec.decode_bytes / t["pod_decode"] / 1e6, max_abs_err_vs_fa3=err)


def new_planner(spec: HybridBatch | None = None, **options) -> PodPlanner:
    """A planner for the batch's shape (SHAPE by default) on the current GPU, as the backend makes one."""
    shape, tokens, reqs, window = SHAPE, 0, 0, None
    if spec is not None:
        shape, tokens, reqs = spec.shape, spec.num_tokens, len(spec.decodes) + len(spec.prefills)
        window = spec.features.get("sliding_window")
        shape = shape | dict(dtype=spec.cache_dtype)
    return device_planner(**shape, max_num_reqs=max(256, reqs), max_num_tokens=max(4096, tokens),
                          sliding_window=window, **options)


def pod_times(spec: HybridBatch, planner_options: list[dict], iters: int) -> list[float]:
    """POD's time alone under each planner (tuning: no vLLM needed; correctness is the tests' job)."""
    b = spec.make()
    out = b.out_like()
    features = spec.op_features()
    return [time_graph(pod_call(b, plan_batch(new_planner(spec, **options), b), out, **features), iters)
            for options in planner_options]


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


def summarize(rows: list[dict]) -> dict:
    return dict(
        configs=len(rows), geomean_pod_over_fa3=geomean([r["pod_over_fa3"] for r in rows]),
        geomean_pod_over_ideal=geomean([r["pod_over_ideal"] for r in rows]),
        geomean_fa3_over_ideal=geomean([r["fa3_over_ideal"] for r in rows]),
        geomean_pod_over_own_serial=geomean([r["pod_over_own_serial"] for r in rows]),
        geomean_own_perfect_overlap=geomean([r["own_perfect_overlap"] for r in rows]),
        best_pod_over_fa3=min(r["pod_over_fa3"] for r in rows),
        worst=max(rows, key=lambda r: r["pod_over_fa3"]))


def batches_from_args(args) -> list[HybridBatch]:
    if args.only:
        batches = [grid_batch(*(int(x) for x in args.only.split(",")))]
    elif args.features:
        batches = feature_batches()[::args.stride]
    elif args.verify:
        batches = verify_batches()[::args.stride]
    else:
        batches = (wide_batches() if args.wide else grid())[::args.stride]
    for spec in batches:
        spec.fp8 = args.kv_cache_dtype == "fp8"
    return batches


FP8_DECODES = [(128, 8192), (64, 16384), (32, 32768), (16, 65536), (8, 131072)]


def fp8_decode_rows(iters: int) -> list[dict]:
    """Decodes alone (SHAPE): POD and FA3 on a bf16 cache and on an fp8 one, and the speed-up fp8
    gives each (the bytes halve), and what reading the same pages alone takes."""
    from benchmarks.kernel.paged_read import paged_read  # Triton: on a GPU machine only
    rows = []
    for n, ctx in FP8_DECODES:
        t = {}
        for fp8 in (False, True):
            spec = HybridBatch([], [ctx] * n, fp8=fp8)
            b = spec.make()
            out = b.out_like()
            kind = "fp8" if fp8 else "bf16"
            t["pod_" + kind] = time_graph(pod_call(b, plan_batch(new_planner(spec), b), out), iters)
            t["fa3_" + kind] = time_graph(FA3(b), iters)
            t["read_" + kind] = time_graph(paged_read(b.key_cache, b.value_cache, b.block_table, ctx), iters)
            t["bytes_" + kind] = spec.decode_bytes
            del b, out
        rows.append(dict(decodes=n, decode_ctx=ctx, pod_bf16_us=t["pod_bf16"], pod_fp8_us=t["pod_fp8"],
                         fa3_bf16_us=t["fa3_bf16"], fa3_fp8_us=t["fa3_fp8"],
                         read_bf16_us=t["read_bf16"], read_fp8_us=t["read_fp8"],
                         pod_fp8_speedup=t["pod_bf16"] / t["pod_fp8"],
                         fa3_fp8_speedup=t["fa3_bf16"] / t["fa3_fp8"],
                         read_fp8_speedup=t["read_bf16"] / t["read_fp8"],
                         pod_fp8_over_fa3_fp8=t["pod_fp8"] / t["fa3_fp8"],
                         pod_fp8_tbps=t["bytes_fp8"] / t["pod_fp8"] / 1e6,
                         fa3_fp8_tbps=t["bytes_fp8"] / t["fa3_fp8"] / 1e6,
                         read_bf16_tbps=t["bytes_bf16"] / t["read_bf16"] / 1e6,
                         read_fp8_tbps=t["bytes_fp8"] / t["read_fp8"] / 1e6))
        print(rows[-1], flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="CSV path; a .json summary is written beside it (default: print only)")
    tables = ap.add_mutually_exclusive_group()
    tables.add_argument("--wide", action="store_true", help="the wide table instead of the grid")
    tables.add_argument("--features", action="store_true",
                        help="the feature table (sliding window, soft-cap, sinks) instead of the grid")
    tables.add_argument("--verify", action="store_true",
                        help="speculative decoding's verify steps (2-8 tokens) beside decodes instead of the grid")
    tables.add_argument("--fp8-decode", action="store_true",
                        help="decodes alone on bf16 and fp8 caches, POD and FA3 (the fp8 speed-up)")
    ap.add_argument("--kv-cache-dtype", choices=("auto", "fp8"), default="auto",
                    help="fp8: an e4m3 KV cache and query, against FA3's fp8 path")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--stride", type=int, default=1, help="time every STRIDE-th batch only")
    ap.add_argument("--pod-only", action="store_true", help="time POD alone and print; no FA3, no files")
    ap.add_argument("--only", metavar="CHUNK,PREFIX,DECODES,CTX",
                    help="this one grid batch instead of a list (decodes may be 0 with --pod-only); "
                         "with a profiler: ncu -k regex:pod_attention -c 1 python -m ... --pod-only --only ...")
    ap.add_argument("--planner", action="append", type=parse_planner, metavar="KEY=N,...",
                    help="planner options: prefill=N / decode=N (KV-split items per CTA slot), "
                         "min_decode_slots=N; with --pod-only, repeat it to time each planner on the "
                         "same batches")
    args = ap.parse_args()
    if args.planner and len(args.planner) > 1 and not args.pod_only:
        ap.error("several --planner options need --pod-only")

    planner_options = [planner_kwargs(opts) for opts in args.planner or [None]]
    if args.fp8_decode:
        rows = fp8_decode_rows(args.iters)
        summary = dict(gpu=torch.cuda.get_device_properties(0).name, date=time.strftime("%Y-%m-%d"),
                       torch=torch.__version__, batches="fp8 decode",
                       geomean_pod_fp8_speedup=geomean([r["pod_fp8_speedup"] for r in rows]),
                       geomean_fa3_fp8_speedup=geomean([r["fa3_fp8_speedup"] for r in rows]),
                       geomean_read_fp8_speedup=geomean([r["read_fp8_speedup"] for r in rows]),
                       geomean_pod_fp8_over_fa3_fp8=geomean([r["pod_fp8_over_fa3_fp8"] for r in rows]))
        print(json.dumps(summary, indent=1))
        if args.out:
            write_results(args.out, rows, summary)
        return
    batches = batches_from_args(args)
    if args.pod_only:
        names = [",".join(f"{k}={v}" for k, v in (o or {}).items()) or "default" for o in args.planner or [None]]
        times = [pod_times(spec, planner_options, args.iters) for spec in batches]
        for spec, ts in zip(batches, times):
            print(f"{spec.columns}  pod us " + "  ".join(f"{n} {t:8.1f}" for n, t in zip(names, ts)))
        print("geomean pod_us " + "  ".join(f"{n} {geomean([ts[i] for ts in times]):.1f}"
                                            for i, n in enumerate(names)))
        return
    rows = []
    for i, spec in enumerate(batches):
        rows.append(bench_batch(spec, planner_options[0], args.iters))
        r = rows[-1]
        print(f"[{i + 1}/{len(batches)}] {spec.columns}  pod {r['pod_us']:8.1f}us  fa3 {r['fa3_us']:8.1f}us  "
              f"ideal {r['ideal_us']:8.1f}us  pod/fa3 {r['pod_over_fa3']:.3f}  pod/ideal {r['pod_over_ideal']:.3f}  "
              f"pod/own serial {r['pod_over_own_serial']:.3f} (perfect {r['own_perfect_overlap']:.3f})",
              flush=True)
    planner = new_planner(**planner_options[0])
    summary = dict(gpu=torch.cuda.get_device_properties(0).name, date=time.strftime("%Y-%m-%d"),
                   torch=torch.__version__,
                   batches="wide" if args.wide else "features" if args.features else
                   "verify" if args.verify else "grid",
                   kv_cache_dtype=args.kv_cache_dtype,
                   shape=None if args.wide or args.features or args.verify else
                   {k: str(v) for k, v in SHAPE.items()},
                   ctas_per_sm=planner.ctas_per_sm, prefill_tile_rows=planner.prefill_rows,
                   split_targets=planner.split_targets, min_decode_slots=planner.min_decode_slots,
                   **summarize(rows))
    print(json.dumps({k: v for k, v in summary.items() if k != "worst"}, indent=1))
    print("worst:", summary["worst"])
    if args.out:
        write_results(args.out, rows, summary)


if __name__ == "__main__":
    main()
