"""PNG plots of the comparison (matplotlib, imported lazily: the GPU machine may not have it)."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path

from .commands import BASELINE_BACKEND
from .results import METRICS, Comparison, ordered_backends

CURVE_METRICS = ("ttft", "tpot", "itl", "e2el")
RATIO_METRICS = ("p50_ttft_ms", "p99_ttft_ms", "p50_tpot_ms", "p99_e2el_ms", "output_throughput")
_LABELS = {m.key: m.label for m in METRICS}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    """Lays out, writes and closes a figure."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower()


def latency_vs_load(comparisons: list[Comparison], out_dir: Path) -> list[Path]:
    """One figure per workload run at two or more finite request rates: latency against offered load."""
    curves: dict[tuple, list[Comparison]] = defaultdict(list)
    for comp in comparisons:
        s = comp.scenario
        if not math.isinf(s.request_rate):
            key = (s.model, s.chunk_size, s.prefix_caching, s.workload, s.max_concurrency)
            curves[key].append(comp)
    plt = _pyplot()
    written = []
    for (model, chunk, _, workload, _), comps in sorted(curves.items()):
        if len(comps) < 2:
            continue
        comps.sort(key=lambda c: c.scenario.request_rate)
        backends = ordered_backends(b for c in comps for b in c.records)
        fig, axes = plt.subplots(1, len(CURVE_METRICS), figsize=(4.2 * len(CURVE_METRICS), 3.8))
        for ax, metric in zip(axes, CURVE_METRICS):
            for i, backend in enumerate(backends):
                color = f"C{i}"
                for p, style in (("50", "-"), ("99", "--")):
                    key = f"p{p}_{metric}_ms"
                    points = [
                        (c.scenario.request_rate, c.records[backend].values[key])
                        for c in comps
                        if backend in c.records and key in c.records[backend].values
                    ]
                    if points:
                        xs, ys = zip(*points)
                        ax.plot(xs, ys, style, marker="o", color=color, label=f"{backend} p{p}")
            ax.set_title(metric.upper())
            ax.set_xlabel("offered load (requests/s)")
            ax.set_ylabel("ms")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"Latency vs load — {model}, chunk {chunk}, {workload}")
        written.append(_save(
            fig, Path(out_dir) / f"latency-vs-load_{_slug(f'{model}-chunk{chunk}-{workload}')}.png"))
    return written


def ratio_bars(comparisons: list[Comparison], out_dir: Path) -> list[Path]:
    """One figure per model and chunk size: each backend's key metrics as a ratio to FLASH_ATTN."""
    groups: dict[tuple, list[Comparison]] = defaultdict(list)
    for comp in comparisons:
        if BASELINE_BACKEND in comp.records and len(comp.records) > 1:
            s = comp.scenario
            groups[(s.model, s.chunk_size, s.prefix_caching)].append(comp)
    plt = _pyplot()
    written = []
    for (model, chunk, _), comps in sorted(groups.items()):
        backends = ordered_backends(b for c in comps for b in c.records)
        others = [b for b in backends if b != BASELINE_BACKEND]
        labels = [f"{c.scenario.workload}\n{c.scenario.load_label}" for c in comps]
        fig, axes = plt.subplots(
            len(RATIO_METRICS), 1, figsize=(max(7.0, 1.6 * len(comps)), 2.4 * len(RATIO_METRICS)),
            sharex=True,
        )
        width = 0.8 / max(1, len(others))
        for ax, key in zip(axes, RATIO_METRICS):
            for i, backend in enumerate(others):
                ratios = [c.ratio(backend, key) for c in comps]
                xs = [j + (i - (len(others) - 1) / 2) * width for j in range(len(comps))]
                heights = [math.nan if r is None else r for r in ratios]  # NaN: no bar
                ax.bar(xs, heights, width, label=backend, color=f"C{i + 1}")
            ax.axhline(1.0, color="black", linewidth=0.8)
            ax.set_ylabel(f"{_LABELS[key]}\n/ {BASELINE_BACKEND}", fontsize=8)
            ax.grid(axis="y", alpha=0.3)
        axes[0].legend(fontsize=8)
        axes[-1].set_xticks(range(len(comps)))
        axes[-1].set_xticklabels(labels, fontsize=7)
        fig.suptitle(
            f"Ratio to {BASELINE_BACKEND} — {model}, chunk {chunk}\n"
            "(latencies: lower is better; throughput: higher is better)"
        )
        written.append(_save(fig, Path(out_dir) / f"ratios_{_slug(f'{model}-chunk{chunk}')}.png"))
    return written


def memory_timeline(
    samples: list[tuple[float, int]], warmup_s: float, out_path: Path, title: str
) -> Path:
    """GPU memory over the soak, with the warm-up period shaded."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    if samples:
        ts, mib = zip(*samples)
        ax.plot(ts, mib, marker=".", linewidth=1)
    ax.axvspan(0, warmup_s, color="grey", alpha=0.2, label="warm-up")
    ax.set_xlabel("seconds since the benchmark started")
    ax.set_ylabel("GPU memory used (MiB)")
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out_path)
