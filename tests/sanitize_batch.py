"""One representative hybrid batch through the op, for compute-sanitizer (memcheck, racecheck):

    compute-sanitizer --tool memcheck python tests/sanitize_batch.py [--fp8] [--head-dim 256]
                                                                    [--decodes-alone]

Decodes long enough to be KV-split (so the in-kernel merge runs), a prefill chunk with a prefix and
one with none, lengths off block boundaries; --fp8: an e4m3 KV cache and query (the staging and
conversion paths); --decodes-alone: the decodes without the prefill chunks (every decode team of
the warp-specialized kernel takes decode items from the start, in pieces that fill waves). Exits
non-zero if the result is wrong.
"""

import argparse

import torch

from vllm_pod.ops import pod_attention
from vllm_pod.plan import ITEM_FIELDS
from vllm_pod.reference import reference_attention
from vllm_pod.testing import batch_shape, device_planner, make_batch, plan_batch, quantize_fp8


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fp8", action="store_true")
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--decodes-alone", action="store_true")
    args = ap.parse_args()
    prefills = [] if args.decodes_alone else [(100, 1200), (33, 33)]
    b = make_batch([700, 3001, 17], prefills, num_q_heads=32, num_kv_heads=8,
                   head_dim=args.head_dim, block_size=16, dtype=torch.bfloat16, device="cuda", seed=3)
    if args.fp8:
        b = quantize_fp8(b, per_head=True, seed=3)
    planner = device_planner(**batch_shape(b), max_num_reqs=16, max_num_tokens=512)
    plan = plan_batch(planner, b)
    splits = int((plan.items[:, ITEM_FIELDS.index("num_splits")] > 1).sum())
    print(f"items: {plan.num_prefill_items} prefill, {plan.num_decode_items} decode, {splits} in KV-splits")
    ref = reference_attention(b.query, b.key_cache, b.value_cache, b.block_table,
                              b.query_start_loc, b.seq_lens, b.scale, descales=b.descales)
    for _ in range(2):  # the second launch checks the counters the first left behind
        out = b.out_like()
        pod_attention(out, b.query, b.key_cache, b.value_cache, b.block_table, plan, b.scale,
                      **b.fp8_options())
        torch.cuda.synchronize()
        err = float((out.float() - ref).abs().max())
        print(f"max abs error vs float32 reference: {err:.3e}")
        assert err < 3e-2 and not out.isnan().any()
    assert int(planner.counters.abs().sum()) == 0


if __name__ == "__main__":
    main()
