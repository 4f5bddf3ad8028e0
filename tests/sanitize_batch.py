"""One representative hybrid batch through the op, for compute-sanitizer (memcheck, racecheck):

    compute-sanitizer --tool memcheck python tests/sanitize_batch.py

Decodes long enough to be KV-split (so the in-kernel merge runs), a prefill chunk with a prefix and
one with none, lengths off block boundaries. Exits non-zero if the result is wrong.
"""

import torch

from vllm_pod.ops import pod_attention
from vllm_pod.plan import ITEM_FIELDS
from vllm_pod.reference import reference_attention
from vllm_pod.testing import batch_shape, device_planner, make_batch, plan_batch


def main():
    b = make_batch([700, 3001, 17], [(100, 1200), (33, 33)], num_q_heads=32, num_kv_heads=8,
                   head_dim=128, block_size=16, dtype=torch.bfloat16, device="cuda", seed=3)
    planner = device_planner(**batch_shape(b), max_num_reqs=16, max_num_tokens=512)
    plan = plan_batch(planner, b)
    splits = int((plan.items[:, ITEM_FIELDS.index("num_splits")] > 1).sum())
    print(f"items: {plan.num_prefill_items} prefill, {plan.num_decode_items} decode, {splits} in KV-splits")
    ref = reference_attention(b.query, b.key_cache, b.value_cache, b.block_table,
                              b.query_start_loc, b.seq_lens, b.scale)
    for _ in range(2):  # the second launch checks the counters the first left behind
        out = torch.full_like(b.query, float("nan"))
        pod_attention(out, b.query, b.key_cache, b.value_cache, b.block_table, plan, b.scale)
        torch.cuda.synchronize()
        err = float((out.float() - ref).abs().max())
        print(f"max abs error vs float32 reference: {err:.3e}")
        assert err < 3e-2 and not out.isnan().any()
    assert int(planner.counters.abs().sum()) == 0


if __name__ == "__main__":
    main()
