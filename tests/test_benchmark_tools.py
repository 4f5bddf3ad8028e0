"""CPU checks of the kernel-level benchmark tools' own logic (their timings run on the GPU)."""

from benchmarks.kernel.attention_share import layer_gemm_shapes
from benchmarks.kernel.bench import (feature_batches, grid, parse_planner, planner_kwargs, verify_batches,
                                     wide_batch, wide_batches)


def test_llama_layer_gemms_follow_the_model_config():
    # QKV: (32 + 2 x 8) heads of 128; gate and up fused: 2 x 14336.
    assert layer_gemm_shapes() == [(4096, 6144), (4096, 4096), (4096, 28672), (14336, 4096)]


def test_planner_options_split_into_planner_arguments():
    opts = parse_planner("prefill=2,decode=1,min_decode_slots=0")
    assert planner_kwargs(opts) == dict(split_items_per_slot={"prefill": 2, "decode": 1}, min_decode_slots=0)
    assert planner_kwargs(None) == dict(split_items_per_slot=None)


def test_wide_table_covers_the_shapes_the_grid_holds_fixed():
    batches = wide_batches()
    names = [b.columns["batch"] for b in batches]
    assert len(set(names)) == len(names)
    heads = {(b.shape["num_q_heads"], b.shape["num_kv_heads"]) for b in batches}
    # GQA ratios 1, 4, 7 and 8, and Llama-3-70B's per-rank heads under TP=2 and TP=4.
    assert {(8, 8), (32, 8), (28, 4), (64, 8), (32, 4), (16, 2)} <= heads
    assert {64, 128, 256} <= {b.shape["head_dim"] for b in batches}
    assert {16, 32, 64} <= {b.shape["block_size"] for b in batches}
    assert all(b.prefills and b.decodes for b in batches), "every batch is hybrid"
    assert any(len(b.prefills) >= 3 for b in batches), "several prefill chunks in one batch"
    long_ctx = [b for b in batches if max(b.decodes) == 131072]
    assert any(max(c for c, _ in b.prefills) >= 2048 for b in long_ctx), "128K decodes beside a long prefill"
    # Each batch fits its planner's buffers (new_planner sizes them by the batch).
    assert all(b.num_tokens == len(b.decodes) + sum(c for c, _ in b.prefills) for b in batches)


def test_feature_table_holds_each_family_layer_in_both_regimes():
    batches = feature_batches()
    names = [b.columns["batch"] for b in batches]
    assert len(set(names)) == len(names) == 14
    features = [b.features for b in batches]
    assert dict(sliding_window=4096, logits_soft_cap=50.0) in features  # Gemma 2's local layers
    assert dict(sliding_window=128, sinks=True) in features              # gpt-oss's local layers
    assert {64, 96, 128, 256} == {b.shape["head_dim"] for b in batches}  # 96: Phi-3
    assert all(b.prefills and b.decodes for b in batches), "every batch is hybrid"
    # Each window is shorter than the prefill's context, so that it cuts key ranges.
    windowed = [b for b in batches if "sliding_window" in b.features]
    assert all(b.features["sliding_window"] < c + p for b in windowed for c, p in b.prefills)
    assert all(b.columns["features"] or b.shape["head_dim"] == 96 for b in batches)


def test_verify_table_holds_steps_that_fit_a_decode_tile_and_steps_that_do_not():
    batches = verify_batches()
    names = [b.columns["batch"] for b in batches]
    assert len(set(names)) == len(names)
    assert all(b.prefills and b.decodes for b in batches), "every batch is hybrid"
    # Rows of a verify step: its tokens x the GQA group; a decode tile holds 16.
    rows = {c * b.shape["num_q_heads"] // b.shape["num_kv_heads"] for b in batches for c, _ in b.prefills if c <= 8}
    assert {8, 16} <= rows and {20, 32} <= rows
    assert {2, 4, 5, 8} == {c for b in batches for c, _ in b.prefills if c <= 8}
    assert any(max(c for c, _ in b.prefills) >= 1024 for b in batches), "verify steps beside a prefill chunk"


def test_grid_keeps_its_axes_as_columns():
    batches = grid()
    assert len(batches) == 54 and len(grid(stride=3)) == 18
    assert batches[0].columns == dict(chunk=512, prefix=0, decodes=16, decode_ctx=2048)
    assert batches[0].prefills == [(512, 0)] and batches[0].decodes == [2048] * 16


def test_wide_batch_builds_decodes_first_and_counts_its_work():
    import torch

    spec = wide_batch("small", [(5, 3), (2, 0)], [(2, 7), (1, 40)], num_q_heads=6, num_kv_heads=2,
                      head_dim=16, block_size=32)
    assert spec.columns["prefills"] == "5@3 2@0" and spec.columns["decodes"] == "2x7 1x40"
    b = spec.make(device="cpu")
    assert b.num_decodes == 3 and b.query.shape == (spec.num_tokens, 6, 16) == (10, 6, 16)
    assert b.key_cache.shape[1:] == (32, 2, 16) and b.query.dtype == torch.bfloat16
    assert (b.query_start_loc.diff().tolist(), b.seq_lens.tolist()) == ([1, 1, 1, 5, 2], [7, 7, 40, 8, 2])
    # Causal FLOPs: query token i of a chunk after p tokens sees p + i + 1 keys; 4 FLOPs per key,
    # head dim and q head (QK^T and PV).
    keys = sum(p + i + 1 for c, p in spec.prefills for i in range(c))
    assert spec.prefill_flops == 4 * keys * 16 * 6
    assert spec.decode_bytes == 2 * (7 + 7 + 40) * 2 * 16 * 2


def test_trace_table_reads_times_across_the_timer_wrap_and_counts_causal_flops():
    import numpy as np

    from benchmarks.kernel.trace_items import item_table, summarize
    from vllm_pod.plan import ITEM_FIELDS, ITEM_INTS, TRACE_FIELDS
    f = {name: i for i, name in enumerate(ITEM_FIELDS + TRACE_FIELDS)}
    items = np.zeros((2, ITEM_INTS), dtype=np.int64)
    # A prefill item: 2 tokens at positions 10 and 11 x 4 heads against keys [0, 12): 11 + 12 keys.
    items[0, [f["nh"], f["n_tok"], f["q_pos0"], f["kv_end"]]] = 4, 2, 10, 12
    # A decode item: 64 keys of one KV head, on CTA 3 / SM 1.
    items[1, [f["nh"], f["n_tok"], f["q_pos0"], f["kv_start"], f["kv_end"]]] = 4, 1, 99, 36, 100
    items[1, f["trace_cta_sm"]] = 3 * 1024 + 1
    # The global timer's low 32 bits wrap between the two starts.
    start = np.array([2**32 - 1000, 500])
    items[:, f["trace_start"]] = start.astype(np.uint32).astype(np.int32)
    items[:, f["trace_end"]] = (start + [3000, 2000]).astype(np.uint32).astype(np.int32)
    t = item_table(items, num_prefill=1, head_dim=128)
    assert list(t["kind"]) == ["prefill", "decode"]
    assert np.allclose(t["start_us"], [0.0, 1.5]) and np.allclose(t["end_us"], [3.0, 3.5])
    assert t["work"][0] == 4 * 128 * 4 * (11 + 12) and t["work"][1] == 64 * 2 * 128 * 2
    assert (t["cta"][1], t["sm"][1]) == (3, 1)
    # Different SMs (0 and 1): neither ran beside the other kind.
    assert list(t["shared"]) == [0.0, 0.0]
    text = "\n".join(summarize(t, num_ctas=2))
    assert "span 3.5 us on 2 CTAs" in text and "prefill: 1 items" in text and "decode: 1 items" in text
    assert "alone" in text and "beside the other kind" not in text


def test_trace_table_measures_time_beside_the_other_kind_per_sm():
    import numpy as np

    from benchmarks.kernel.trace_items import shared_fraction, summarize
    # SM 0: a prefill over [0, 10) and decodes over [2, 4) and [8, 12); SM 1: a decode over [0, 10).
    is_prefill = np.array([True, False, False, False])
    sm = np.array([0, 0, 0, 1])
    start, end = np.array([0.0, 2.0, 8.0, 0.0]), np.array([10.0, 4.0, 12.0, 10.0])
    assert np.allclose(shared_fraction(is_prefill, sm, start, end), [0.4, 1.0, 0.5, 0.0])
    t = dict(kind=np.where(is_prefill, "prefill", "decode"), start_us=start, end_us=end,
             keys=np.array([100, 64, 64, 64]), work=np.array([1e6, 2e3, 4e3, 2e4]),
             shared=shared_fraction(is_prefill, sm, start, end))
    text = "\n".join(summarize(t, num_ctas=3))
    # Decodes: 6 kB in 2 + 4 us with the prefill beside them (the second half the time: counted as
    # shared), 20 kB in 10 us alone.
    assert "beside the other kind 1.00 GB/s (2); alone 2.00 GB/s (1)" in text


def test_trace_table_refuses_a_buffer_without_a_trace():
    import numpy as np
    import pytest

    from benchmarks.kernel.trace_items import item_table
    with pytest.raises(RuntimeError, match="POD_TRACE"):
        item_table(np.zeros((3, 16), dtype=np.int64), num_prefill=1, head_dim=128)


def test_sass_mix_counts_opcodes_and_finds_the_hot_loop(tmp_path):
    from benchmarks.kernel.sass_mix import hot_loop, mix, read_lines, report

    head = ['"Kernel Name","k"', '"Address","Source","Warp Stall Sampling (All Samples)",'
            '"Warp Stall Sampling (Not-issued Samples)","# Samples","Instructions Executed"']
    body = [("MOV R1, c[0x0][0x28]", 10, 1),      # prologue: once per warp
            ("HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], R24", 400, 7),
            ("FMUL.FTZ R2, R2, R3", 400, 2),
            ("@P0 FMUL.FTZ R4, R4, R3", 400, 1),  # predicated: the opcode is the second word
            ("EXIT", 10, 0)]
    path = tmp_path / "k_sass.csv"
    path.write_text("\n".join(head + [f'"0x{i:x}","{s}","{w}","{w}","{w}","{n:,}"'
                                      for i, (s, n, w) in enumerate(body)]) + "\n")
    lines = read_lines(path)
    assert [ln.opcode for ln in lines] == ["MOV", "HGMMA", "FMUL", "FMUL", "EXIT"]
    assert mix(lines)[0] == ("FMUL", 800, 3)
    count, loop = hot_loop(lines)
    assert count == 400 and len(loop) == 3
    assert "hot loop: 3 instructions per pass, 400 passes" in report(path)


def test_sass_mix_static_finds_wgmma_loops_by_their_backward_branch(tmp_path):
    from benchmarks.kernel.sass_mix import static_loops, static_report

    listing = """
        Function : _ZN3pod20pod_attention_kernelINS_10TileConfigI13__nv_bfloat16Li128ELb0EEEEEvNS_9PodParamsE
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   BRA 0x0 ;
        Function : _ZN3pod20pod_attention_kernelINS_10TileConfigI13__nv_bfloat16Li128ELb1EEEEEvNS_9PodParamsE
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], R24 ;
        /*0020*/                   FMUL.FTZ R2, R2, R3 ;
        /*0030*/              @!P0 BRA 0x10 ;
        /*0040*/                   EXIT ;
    """
    path = tmp_path / "k.sass"
    path.write_text(listing)
    loops = static_loops(listing, "Lb1E")
    assert [(start, end, len(body)) for start, end, body in loops] == [(0x10, 0x30, 3)]
    assert "loop 0x10-0x30: 3 instructions, 1 HGMMA" in static_report(path, "Lb1E")
    assert "no loop issuing wgmma" in static_report(path, "Lb0E")  # its only loop has no wgmma


def test_sass_mix_paths_follow_each_way_through_a_loop_body(tmp_path):
    from benchmarks.kernel.sass_mix import function_code, loop_paths, static_report

    # A loop at 0x10-0x90: a predicated branch over a two-instruction block (a masked tile's
    # extra work), an unconditional jump over one instruction, and an exit out of the loop.
    listing = """
        Function : kernel_Lb1E
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], R24 ;
        /*0020*/               @P1 BRA 0x50 ;
        /*0030*/                   FMNMX R2, R2, R3, !PT ;
        /*0040*/                   FSEL R2, R2, RZ, P2 ;
        /*0050*/                   BRA 0x70 ;
        /*0060*/                   FMUL R2, R2, R3 ;
        /*0070*/               @P3 BRA 0xa0 ;
        /*0080*/                   FADD R2, R2, R3 ;
        /*0090*/              @!P0 BRA 0x10 ;
        /*00a0*/                   EXIT ;
    """
    code = function_code(listing, "Lb1E")
    # Not taken at 0x20: 0x10-0x50, jump to 0x70, 0x70-0x90 = 8; taken: 0x10, 0x20, 0x50, 0x70-0x90 = 6.
    assert loop_paths(code, 0x10, 0x90) == [(6, (0x20, 0x50)), (8, (0x50,))]
    assert loop_paths(code, 0x10, 0x90, limit=1) is None
    path = tmp_path / "k.sass"
    path.write_text(listing)
    assert "path of 6 instructions, branches taken at: 0x20, 0x50" in static_report(
        path, "Lb1E", paths=True)


def test_sass_mix_loops_break_each_innermost_loops_stalls_down_by_reason(tmp_path):
    from benchmarks.kernel.sass_mix import loop_report, main

    head = ['"Kernel Name","k"', '"Address","Source","Warp Stall Sampling (All Samples)",'
            '"Warp Stall Sampling (Not-issued Samples)","Instructions Executed","stall_math",'
            '"stall_long_sb","stall_math (Not Issued)"']
    # An outer loop 0x10-0x60 around an mma.sync loop 0x20-0x40, then a wgmma loop 0x70-0x80.
    body = [(0x00, "MOV R1, c[0x0][0x28]", 1, 0, 0, 0),
            (0x10, "LDGSTS.E.BYPASS.128 [R2], desc[UR4][R4.64]", 10, 5, 0, 5),
            (0x20, "HMMA.16816.F32.BF16 R8, R12, R16, R8", 100, 30, 24, 6),
            (0x30, "FMUL.FTZ R2, R2, R3", 100, 10, 0, 0),
            (0x40, "@P0 BRA 0x20", 100, 0, 0, 0),
            (0x50, "BAR.SYNC.DEFER_BLOCKING R5, 0x80", 10, 60, 0, 0),
            (0x60, "@!P1 BRA 0x10", 10, 0, 0, 0),
            (0x70, "HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], R24", 500, 40, 40, 0),
            (0x80, "@P2 BRA 0x70", 500, 0, 0, 0)]
    path = tmp_path / "k_sass.csv"
    path.write_text("\n".join(head + [f'"0x{a:x}","{s}","{w}","{w}","{n}","{m}","{lsb}","99"'
                                      for a, s, n, w, m, lsb in body]) + "\n")
    text = loop_report(path)
    # The busiest innermost loop first; the outer loop is not reported.
    assert text.splitlines()[0] == "k_sass.csv: loop 0x70-0x80 (wgmma): 2 instructions, 0.0 M executed, 40 stall samples"
    assert "loop 0x20-0x40 (mma.sync): 3 instructions, 0.0 M executed, 40 stall samples" in text
    assert "    math 60%, long_sb 15%" in text  # 24 and 6 of the mma.sync loop's 40 samples
    assert "0x10-0x60" not in text
    main([str(path), "--loops"])


def test_sass_mix_static_flags_rescale_factors_from_a_fused_multiply_add(tmp_path):
    from benchmarks.kernel.sass_mix import static_report

    # alpha = exp2(m_old * scale - base), then tested against 1: from an FADD of two rounded
    # products (exact when the max is kept), or from an FFMA that fused one of them.
    def kernel(name, argument):
        return f"""
        Function : {name}
        /*0000*/                   FMUL.FTZ R14, R17, UR18 ;
        /*0010*/                   FMUL.FTZ R15, R16, UR18 ;
        /*0020*/                   {argument} ;
        /*0030*/                   MUFU.EX2 R13, R13 ;
        /*0040*/                   FADD.FTZ R2, R2, R3 ;
        /*0050*/                   FSETP.NEU.FTZ.AND P1, PT, R13, 1, PT ;
        /*0060*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], R24 ;
        /*0070*/              @!P0 BRA 0x60 ;
        /*0080*/                   EXIT ;
"""
    path = tmp_path / "k.sass"
    path.write_text(kernel("exact_Lb1E", "FADD.FTZ R13, -R15, R14")
                    + kernel("fused_Lb1E", "FFMA.FTZ R13, R17, UR18, -R15"))
    exact, fused = static_report(path, "exact_Lb1E"), static_report(path, "fused_Lb1E")
    assert "rescale factors from FADD 1\n" in exact and "not FADD" not in exact
    assert "rescale factors from FFMA 1  <- not FADD" in fused
