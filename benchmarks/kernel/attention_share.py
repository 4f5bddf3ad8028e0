"""Attention's share of a decoder layer's time in hybrid serving steps, measured on the GPU.

What fraction of a step attention takes bounds what any attention kernel can gain end to end. For
Llama-3-8B shapes (configs/models/llama-3-8b.json: hidden 4096, 32/8 heads of 128, MLP 14336, bf16,
block 16) and a set of step shapes (one prefill chunk after a prefix, plus N decodes), this times
one layer's four GEMMs on the step's tokens (QKV, O, gate-up, down) and its attention, FA3 as ONE
varlen call (what FLASH_ATTN runs) and POD, each as CUDA-graph replay medians, and prints
attention / (attention + GEMMs) for both. Norms, RoPE, the activation, the KV-cache write, the LM
head, sampling and host time are left out; they all sit on the non-attention side, so the printed
share is an upper bound of attention's share of the step. Needs vLLM (FA3).

    python -m benchmarks.kernel.attention_share --out benchmarks/results/attention_share_h100.csv
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch

from benchmarks.kernel.bench import FA3, SHAPE, hybrid_batch, new_planner, pod_call, time_graph, write_csv
from vllm_pod.testing import plan_batch

MODEL = json.loads((Path(__file__).resolve().parents[2] / "configs/models/llama-3-8b.json").read_text())


def layer_gemm_shapes() -> list[tuple[int, int]]:
    """(in, out) features of one Llama layer's linear layers."""
    h, d = MODEL["hidden_size"], MODEL["hidden_size"] // MODEL["num_attention_heads"]
    qkv = (MODEL["num_attention_heads"] + 2 * MODEL["num_key_value_heads"]) * d
    return [(h, qkv), (h, h), (h, 2 * MODEL["intermediate_size"]), (MODEL["intermediate_size"], h)]


def gemm_us(tokens: int, iters: int) -> float:
    shapes = layer_gemm_shapes()
    xs = [torch.randn(tokens, i, dtype=SHAPE["dtype"], device="cuda") for i, _ in shapes]
    ws = [torch.randn(o, i, dtype=SHAPE["dtype"], device="cuda") / i ** 0.5 for i, o in shapes]
    return time_graph(lambda: [torch.nn.functional.linear(x, w) for x, w in zip(xs, ws)], iters)


def step(chunk: int, prefix: int, decodes: int, ctx: int, planner, iters: int) -> dict:
    b = hybrid_batch(chunk, prefix, decodes, ctx)
    pod = time_graph(pod_call(b, plan_batch(planner, b), torch.empty_like(b.query)), iters)
    fa3 = time_graph(FA3(b), iters)
    gemm = gemm_us(chunk + decodes, iters)
    return dict(chunk=chunk, prefix=prefix, decodes=decodes, decode_ctx=ctx, gemm_us=gemm,
                fa3_us=fa3, pod_us=pod, fa3_share=fa3 / (fa3 + gemm), pod_share=pod / (pod + gemm),
                pod_step_over_fa3_step=(pod + gemm) / (fa3 + gemm))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="CSV path")
    ap.add_argument("--chunks", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--prefixes", type=int, nargs="+", default=[0, 2048, 4096])
    ap.add_argument("--decodes", type=int, nargs="+", default=[4, 16, 64])
    ap.add_argument("--decode-ctx", type=int, default=6000)
    ap.add_argument("--iters", type=int, default=30)
    args = ap.parse_args()
    planner = new_planner()
    rows = []
    for chunk, prefix, decodes in itertools.product(args.chunks, args.prefixes, args.decodes):
        r = step(chunk, prefix, decodes, args.decode_ctx, planner, args.iters)
        rows.append(r)
        print(f"chunk {chunk:5d} prefix {prefix:5d} decodes {decodes:3d}x{args.decode_ctx}: GEMMs "
              f"{r['gemm_us']:7.1f} us, FA3 {r['fa3_us']:6.1f} us ({r['fa3_share']:.0%}), POD "
              f"{r['pod_us']:6.1f} us ({r['pod_share']:.0%}); layer POD/FA3 {r['pod_step_over_fa3_step']:.3f}",
              flush=True)
    write_csv(args.out, rows)


if __name__ == "__main__":
    main()
