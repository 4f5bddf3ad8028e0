"""CPU checks of the kernel-level benchmark tools' own logic (their timings run on the GPU)."""

from benchmarks.attention_share import layer_gemm_shapes
from benchmarks.bench_kernel import parse_planner, planner_kwargs


def test_llama_layer_gemms_follow_the_model_config():
    # QKV: (32 + 2 x 8) heads of 128; gate and up fused: 2 x 14336.
    assert layer_gemm_shapes() == [(4096, 6144), (4096, 4096), (4096, 28672), (14336, 4096)]


def test_planner_options_split_into_planner_arguments():
    opts = parse_planner("prefill=2,decode=1,min_decode_slots=0")
    assert planner_kwargs(opts) == dict(split_items_per_slot={"prefill": 2, "decode": 1}, min_decode_slots=0)
    assert planner_kwargs(None) == dict(split_items_per_slot=None)
