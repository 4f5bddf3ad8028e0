"""Each backend's serving metrics as a ratio to FLASH_ATTN's, from `vllm bench sweep serve` results.

vLLM's sweep writes, per (backend, workload) combination, a summary.json: the list of that
combination's runs, each `vllm bench serve`'s result with the serve and bench parameters merged
in. `vllm bench sweep plot` draws metrics against parameters; this adds what it does not: one table
(and one bar plot) of every backend against the baseline, per workload, the median over the runs
and the spread of the throughput between them.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections import defaultdict
from pathlib import Path

BASELINE = "FLASH_ATTN"
# configs/backends/ select POD by the name every vLLM version registers it under.
BACKEND_NAMES = {"CUSTOM": "POD"}
METRICS = (("p50_ttft_ms", "TTFT p50"), ("p99_ttft_ms", "TTFT p99"), ("p50_tpot_ms", "TPOT p50"),
           ("p99_itl_ms", "ITL p99"), ("p50_e2el_ms", "E2EL p50"), ("p99_e2el_ms", "E2EL p99"),
           ("request_throughput", "throughput"))
THROUGHPUT = "request_throughput"


def backend_of(record: dict) -> str:
    name = str(record.get("attention_backend", "default"))
    return BACKEND_NAMES.get(name, name)


def experiment_of(summary: Path) -> Path:
    """The experiment a combination's summary.json belongs to: its folder's parent, or that
    parent's parent for repeats run as experiments of their own (run1, run2, ...: the backends
    alternate between repeats), whose runs pool."""
    experiment = summary.parent.parent
    return experiment.parent if re.fullmatch(r"run\d+", experiment.name) else experiment


def load_medians(results_dir: Path) -> dict[str, dict[str, dict]]:
    """{workload: {backend: {metric: median over runs, 'runs': n, 'spread': (max - min) / median
    of the throughput}}} from every summary.json under results_dir; the workload is the
    bench-params entry's name, prefixed by the experiment's directory when results_dir holds
    several experiments."""
    runs: dict[tuple[str, str], list[dict]] = defaultdict(list)
    summaries = sorted(Path(results_dir).rglob("summary.json"))
    experiments = {experiment_of(p) for p in summaries}
    for path in summaries:
        for record in json.loads(path.read_text(encoding="utf-8")):
            workload = str(record.get("_benchmark_name", path.parent.name))
            if len(experiments) > 1:
                workload = f"{experiment_of(path).name}: {workload}"
            runs[(workload, backend_of(record))].append(record)
    table: dict[str, dict[str, dict]] = defaultdict(dict)
    for (workload, backend), records in runs.items():
        medians = {key: statistics.median(r[key] for r in records) for key, _ in METRICS
                   if all(r.get(key) is not None for r in records)}
        throughput = [r[THROUGHPUT] for r in records if r.get(THROUGHPUT) is not None]
        spread = (max(throughput) - min(throughput)) / statistics.median(throughput) if throughput else None
        table[workload][backend] = medians | {"runs": len(records), "spread": spread}
    return table


def ratio(table_row: dict[str, dict], backend: str, key: str) -> float | None:
    base, value = table_row.get(BASELINE, {}).get(key), table_row.get(backend, {}).get(key)
    return None if base in (None, 0) or value is None else value / base


def markdown(table: dict[str, dict[str, dict]]) -> str:
    lines = [f"Ratio to {BASELINE} (median over runs; latencies: lower is better, throughput: higher is "
             "better). Spread: (max - min) / median of a backend's throughput over its runs, the "
             f"backend's and {BASELINE}'s: a gap smaller than these is not a gain.", "",
             "| workload | backend | runs | " + " | ".join(label for _, label in METRICS)
             + f" | spread | {BASELINE}'s spread |",
             "|---|---|---|" + "---|" * (len(METRICS) + 2)]
    percent = lambda x: "-" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    for workload in sorted(table):
        row = table[workload]
        for backend in sorted(b for b in row if b != BASELINE):
            cells = [ratio(row, backend, key) for key, _ in METRICS]
            lines.append(f"| {workload} | {backend} | {row[backend]['runs']} | "
                         + " | ".join("-" if c is None else f"{c:.2f}x" for c in cells)
                         + f" | {percent(row[backend]['spread'])} | {percent(row.get(BASELINE, {}).get('spread'))} |")
    return "\n".join(lines) + "\n"


def bar_plot(table: dict[str, dict[str, dict]], out_path: Path) -> Path:
    """One panel per metric: each backend's ratio to the baseline, per workload."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = sorted(table)
    backends = sorted({b for row in table.values() for b in row if b != BASELINE})
    fig, axes = plt.subplots(len(METRICS), 1, figsize=(max(7.0, 1.6 * len(workloads)), 2.2 * len(METRICS)),
                             sharex=True)
    width = 0.8 / max(1, len(backends))
    for ax, (key, label) in zip(axes, METRICS):
        for i, backend in enumerate(backends):
            heights = [ratio(table[w], backend, key) for w in workloads]
            xs = [j + (i - (len(backends) - 1) / 2) * width for j in range(len(workloads))]
            ax.bar(xs, [math.nan if h is None else h for h in heights], width, label=backend, color=f"C{i + 1}")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_ylabel(f"{label}\n/ {BASELINE}", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[-1].set_xticks(range(len(workloads)), workloads, fontsize=7, rotation=20)
    fig.suptitle(f"Ratio to {BASELINE} (latencies: lower is better; throughput: higher is better)")
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def write_ratios(results_dir: Path, with_plot: bool = True) -> str:
    """Writes ratios.md (and ratios.png) into results_dir; returns the table."""
    table = load_medians(results_dir)
    if not table:
        raise ValueError(f"no summary.json of vllm bench sweep serve under {results_dir}")
    text = markdown(table)
    (Path(results_dir) / "ratios.md").write_text(text, encoding="utf-8")
    if with_plot:
        bar_plot(table, Path(results_dir) / "ratios.png")
    return text
