"""Host cost of the metadata builders: `build()` of hybrid batches, called as vLLM's model runner
calls it (a CommonAttentionMetadata per step), for POD's builder and FLASH_ATTN's.

Llama-3-8B per-GPU shapes (32 query heads, 8 KV heads, head dim 128, bf16, block 16), vLLM's
default limits of 256 requests and 8192 batched tokens. Each batch shape is built `--iters` times
on fresh random lengths of that shape; the table gives the median and p90 microseconds of one call.

    python -m benchmarks.kernel.bench_builder                 # on the CPU
    python -m benchmarks.kernel.bench_builder --device cuda   # on a GPU, with the built extension

On the CPU (`--device cpu`) the builders' device tensors are CPU tensors, so the plan's
host->device copy is a CPU memcpy of the same bytes and no CUDA call is timed (on a GPU the copy
adds one cudaMemcpyAsync and one event record); the fused kernel's occupancy (SMs, CTAs per SM,
prefill tile rows), which only the extension can report, is taken from the options. FLASH_ATTN's
builder skips FA3's ahead-of-time scheduler on the CPU (vLLM enables it only with FA3 on a GPU),
so its CPU number is without that GPU call.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SHAPE = dict(num_q_heads=32, num_kv_heads=8, head_dim=128, block_size=16)
MAX_NUM_SEQS, MAX_NUM_BATCHED_TOKENS, MAX_MODEL_LEN = 256, 8192, 32768

# name: (decodes, prefill chunks, tokens per chunk); decode contexts and chunk prefixes are random.
BATCHES = {
    "1d+1p": (1, 1, 512),
    "16d+1p": (16, 1, 2048),
    "64d+2p": (64, 2, 1024),
    "128d+1p": (128, 1, 2048),
    "128d+16p": (128, 16, 256),
    "255d+1p": (255, 1, 2048),
    "192d+64p": (192, 64, 64),
}


def model_config_dir() -> str:
    """A local Llama-shaped model config (no hub access)."""
    path = Path(tempfile.mkdtemp(prefix="bench-builder-"))
    (path / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
        "intermediate_size": 14336, "num_attention_heads": SHAPE["num_q_heads"],
        "num_key_value_heads": SHAPE["num_kv_heads"], "head_dim": SHAPE["head_dim"],
        "num_hidden_layers": 32, "vocab_size": 128256, "max_position_embeddings": MAX_MODEL_LEN,
        "rms_norm_eps": 1e-5, "torch_dtype": "bfloat16"}))
    return str(path)


def make_builders(device: torch.device, num_sms: int, ctas_per_sm: int, prefill_rows: int):
    from vllm.config import (CacheConfig, DeviceConfig, ModelConfig, SchedulerConfig, VllmConfig,
                             set_current_vllm_config)
    from vllm.v1.attention.backends.flash_attn import FlashAttentionMetadataBuilder
    from vllm.v1.kv_cache_interface import FullAttentionSpec

    import vllm_pod
    from vllm_pod import backend as pod_backend

    vllm_pod.register()
    if device.type == "cpu":
        pod_backend._device_occupancy = lambda *a: (num_sms, ctas_per_sm)
        pod_backend.device_prefill_tile_rows = lambda *a: prefill_rows
    config = VllmConfig(
        model_config=ModelConfig(model=model_config_dir(), skip_tokenizer_init=True,
                                 dtype="bfloat16", max_model_len=MAX_MODEL_LEN),
        device_config=DeviceConfig(device=device.type),
        cache_config=CacheConfig(block_size=SHAPE["block_size"]),
        scheduler_config=SchedulerConfig(max_num_seqs=MAX_NUM_SEQS,
                                         max_num_batched_tokens=MAX_NUM_BATCHED_TOKENS,
                                         max_model_len=MAX_MODEL_LEN, is_encoder_decoder=False),
    )
    spec = FullAttentionSpec(block_size=SHAPE["block_size"], num_kv_heads=SHAPE["num_kv_heads"],
                             head_size=SHAPE["head_dim"], dtype=torch.bfloat16)
    with set_current_vllm_config(config):
        pod = pod_backend.PodAttentionMetadataBuilder(spec, ["layer.0"], config, device)
        try:
            fa = FlashAttentionMetadataBuilder(spec, ["layer.0"], config, device)
        except Exception as e:  # noqa: BLE001  (reported in the table, not fatal)
            print(f"FLASH_ATTN's builder cannot be constructed here: {e!r}")
            fa = None
    return config, pod, fa


def random_batch(rng: np.random.Generator, num_decodes: int, num_prefills: int, chunk: int,
                 device: torch.device):
    """vLLM's per-step metadata, decodes first: contexts 128..16384, chunk prefixes 0..8192."""
    from vllm.v1.attention.backend import CommonAttentionMetadata

    q_lens = np.array([1] * num_decodes + [chunk] * num_prefills, dtype=np.int64)
    ctx = np.concatenate([rng.integers(128, 16384, num_decodes),
                          chunk + rng.integers(0, 8192, num_prefills)])
    qsl = torch.from_numpy(np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32))
    seq = torch.from_numpy(ctx.astype(np.int32))
    num_reqs, num_tokens = len(q_lens), int(q_lens.sum())
    max_blocks = -(-MAX_MODEL_LEN // SHAPE["block_size"])
    # As the model runner does: pinned CPU copies beside the device tensors.
    return CommonAttentionMetadata(
        query_start_loc=qsl.to(device), query_start_loc_cpu=qsl, seq_lens=seq.to(device),
        seq_lens_cpu_upper_bound=seq, num_reqs=num_reqs, num_actual_tokens=num_tokens,
        max_query_len=int(q_lens.max()), max_seq_len=int(ctx.max()),
        block_table_tensor=torch.zeros(num_reqs, max_blocks, dtype=torch.int32, device=device),
        slot_mapping=torch.zeros(num_tokens, dtype=torch.int64, device=device),
    )


def time_builds(config, builder, batches, sync) -> list[float]:
    from vllm.config import set_current_vllm_config

    times = []
    with set_current_vllm_config(config):
        for cm in batches:
            t0 = time.perf_counter()
            builder.build(common_prefix_len=0, common_attn_metadata=cm)
            times.append((time.perf_counter() - t0) * 1e6)
            sync()  # between calls, not timed: each call starts from an idle stream
    return times[len(times) // 10:]  # the first tenth is warm-up


def plot(rows: list[dict], path: str, title: str) -> None:
    """Median build() time per batch shape, POD beside FLASH_ATTN, bars to the p90."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    width = 0.38
    for offset, label, key in ((-width / 2, "POD", "pod"), (width / 2, "FLASH_ATTN", "fa")):
        if f"{key}_median_us" not in rows[0]:
            continue
        x = [i + offset for i in range(len(rows))]
        med = [r[f"{key}_median_us"] for r in rows]
        ax.bar(x, med, width, label=f"{label} build()")
        ax.errorbar(x, med, yerr=[[0] * len(rows), [r[f"{key}_p90_us"] - m for r, m in zip(rows, med)]],
                    fmt="none", ecolor="k", capsize=2)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([f"{r['batch']}\n{r['reqs']} reqs" for r in rows], fontsize=7)
    ax.set_ylabel("us per call (median, bar to p90)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--num-sms", type=int, default=132, help="CPU only: the GPU planned for")
    ap.add_argument("--ctas-per-sm", type=int, default=2, help="CPU only")
    ap.add_argument("--prefill-rows", type=int, default=128, help="CPU only")
    ap.add_argument("--json", help="also write the table here")
    ap.add_argument("--plot", help="also draw it here (PNG)")
    args = ap.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    config, pod, fa = make_builders(device, args.num_sms, args.ctas_per_sm, args.prefill_rows)
    rng = np.random.default_rng(0)
    rows = []
    print(f"{'batch':>10} {'reqs':>5} {'tokens':>6} | {'POD med':>8} {'p90':>7} | "
          f"{'FA med':>8} {'p90':>7}   (us per build() call, {device.type})")
    for name, (nd, npf, chunk) in BATCHES.items():
        batches = [random_batch(rng, nd, npf, chunk, device) for _ in range(args.iters)]
        row = dict(batch=name, reqs=nd + npf, tokens=nd + npf * chunk)
        for label, builder in (("pod", pod), ("fa", fa)):
            if builder is None:
                continue
            t = time_builds(config, builder, batches, sync)
            row[f"{label}_median_us"] = statistics.median(t)
            row[f"{label}_p90_us"] = float(np.percentile(t, 90))
        rows.append(row)
        fa_cols = (f"{row['fa_median_us']:8.1f} {row['fa_p90_us']:7.1f}" if fa is not None
                   else f"{'n/a':>8} {'n/a':>7}")
        print(f"{name:>10} {row['reqs']:5d} {row['tokens']:6d} | {row['pod_median_us']:8.1f} "
              f"{row['pod_p90_us']:7.1f} | {fa_cols}")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(device=str(device), rows=rows), indent=1))
    if args.plot:
        plot(rows, args.plot, f"Metadata builder host cost ({device.type} host)")


if __name__ == "__main__":
    main()
