"""The report of a results directory: console table, results.md, PNG plots, what ran where.

`report` reads only files, so it can run on a machine other than the one that ran the sweep (the GPU
machine may lack matplotlib). It reads the whole tree under the directory, so the results of several
invocations (one per GPU-machine call, each in its own subdirectory) make one report.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import shlex
import sys
from pathlib import Path

from . import gpu, plots
from .results import compare, format_console, format_markdown, load_records
from .sweep import OUTCOMES_FILE

INVOCATIONS_FILE = "invocations.jsonl"


def record_invocation(results_dir: Path, argv: list[str]) -> None:
    """Append the exact command, date, GPU and versions of this invocation to invocations.jsonl."""

    def version(package: str) -> str:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    entry = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, "-m", "benchmarks.serving", *argv]),
        "gpus": gpu.gpu_names(),
        "versions": {p: version(p) for p in ("vllm", "torch", "flashinfer-python", "vllm-pod")},
    }
    Path(results_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(results_dir) / INVOCATIONS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


def collect_outcomes(results_dir: Path) -> dict[str, dict]:
    """Outcomes from every outcomes.json in the tree; a run that succeeded anywhere counts as ok."""
    merged: dict[str, dict] = {}
    for path in sorted(Path(results_dir).rglob(OUTCOMES_FILE)):
        for run, outcome in json.loads(path.read_text(encoding="utf-8")).items():
            if merged.get(run, {}).get("status") != "ok":
                merged[run] = outcome
    return merged


def _invocations_markdown(results_dir: Path) -> list[str]:
    entries = [
        json.loads(line)
        for path in Path(results_dir).rglob(INVOCATIONS_FILE)
        for line in path.read_text(encoding="utf-8").splitlines()
    ]
    if not entries:
        return []
    lines = ["## How these results were made", ""]
    for entry in sorted(entries, key=lambda e: e["date"]):
        versions = ", ".join(f"{k} {v}" for k, v in entry["versions"].items())
        gpus = "; ".join(entry["gpus"] or ["no GPU seen"])
        lines += [f"- {entry['date']} on {gpus} ({versions}):", f"  `{entry['command']}`"]
    return lines + [""]


def write_report(results_dir: Path, *, with_plots: bool = True) -> str:
    """Write results.md (and plots/*.png) into results_dir; return the console text."""
    results_dir = Path(results_dir)
    comparisons = compare(load_records(results_dir))
    outcomes = collect_outcomes(results_dir)
    problems = [o for _, o in sorted(outcomes.items()) if o["status"] != "ok"]
    markdown = format_markdown(comparisons, problems)
    console = format_console(comparisons)
    if problems:
        console += "\nRuns that did not succeed:\n" + "".join(
            f"  {o['status'].upper():7} {o['run']}: {o['reason']}\n" for o in problems
        )
    if with_plots:
        try:
            pngs = plots.latency_vs_load(comparisons, results_dir / "plots")
            pngs += plots.ratio_bars(comparisons, results_dir / "plots")
        except ImportError:
            console += "\nmatplotlib is not installed: no plots (run `report` where it is).\n"
        else:
            markdown += "\n## Plots\n\n" + "".join(
                f"![{p.stem}](plots/{p.name})\n\n" for p in pngs
            )
    markdown += "\n" + "\n".join(_invocations_markdown(results_dir))
    (results_dir / "results.md").write_text(markdown.rstrip() + "\n", encoding="utf-8")
    return console + f"\nWrote {results_dir / 'results.md'}\n"
