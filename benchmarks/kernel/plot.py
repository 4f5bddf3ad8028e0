"""Plot of a kernel benchmark CSV: POD and FA3 (one call) per config, normalised to the ideal
max(prefill alone, decode alone).

    python -m benchmarks.kernel.plot benchmarks/results/kernel_h200.csv   # writes kernel_h200.png
    python -m benchmarks.kernel.plot benchmarks/results/kernel_wide_h200.csv  # the wide table
    python -m benchmarks.kernel.plot benchmarks/results/kernel_fp8_decode_h200.csv  # --fp8-decode

An --fp8-decode CSV plots each kernel's decode time on an fp8 cache against its own on bf16.
"""

import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_fp8_decode(rows: list[dict], out: str) -> None:
    labels = [f"{r['decodes']}x{int(r['decode_ctx']) // 1024}K" for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    kinds = [("FA3", "fa3"), ("POD", "pod"), ("the same pages, read alone", "read")]
    width = 0.8 / len(kinds)
    for i, (name, key) in enumerate(kinds):
        ax.bar([j + width * (i - (len(kinds) - 1) / 2) for j in x],
               [float(r[f"{key}_bf16_us"]) / float(r[f"{key}_fp8_us"]) for r in rows], width=width, label=name)
    ax.axhline(2.0, color="k", lw=0.8, ls="--", label="half the bytes: 2x")
    ax.set_xticks(list(x), labels)
    ax.set_xlabel("decodes x context (Llama-3-8B shapes, block 16)")
    ax.set_ylabel("bf16 time / fp8 time (higher is better)")
    ax.set_title("Decode alone: what an fp8 KV cache gains each kernel")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def plot(csv_path: str) -> str:
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    out = csv_path.rsplit(".", 1)[0] + ".png"
    if "pod_fp8_us" in rows[0]:
        plot_fp8_decode(rows, out)
        return out
    # Grid rows are named by their axes, rows of the wide table by their batch name.
    labels = [r["batch"] if "batch" in r else
              f"{r['chunk']}/{r['prefix']}/{r['decodes']}x{int(r['decode_ctx']) // 1024}K" for r in rows]
    pod = [float(r["pod_over_ideal"]) for r in rows]
    fa3 = [float(r["fa3_over_ideal"]) for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(10, len(rows) * 0.28), 5))
    ax.bar([i - 0.2 for i in x], fa3, width=0.4, label="FA3, one varlen call")
    ax.bar([i + 0.2 for i in x], pod, width=0.4, label="POD (fused)")
    ax.axhline(1.0, color="k", lw=0.8, ls="--", label="ideal: max(prefill alone, decode alone)")
    ax.set_xticks(list(x), labels, rotation=90, fontsize=7)
    ax.set_xlabel("batch" if "batch" in rows[0] else "chunk / prefix / decodes x context")
    ax.set_ylabel("time / ideal (lower is better)")
    cache = "fp8 KV cache" if "fp8" in csv_path else "bf16"
    ax.set_title(f"Hybrid-batch attention on one GPU ({cache})" if "batch" in rows[0] else
                 f"Hybrid-batch attention on one GPU (Llama-3-8B shapes, {cache}, block 16)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return out


if __name__ == "__main__":
    print(plot(sys.argv[1]))
