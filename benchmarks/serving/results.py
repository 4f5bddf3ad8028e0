"""Reading `vllm bench serve --save-result` JSONs and comparing backends against FLASH_ATTN.

Each JSON carries the harness's --metadata (attention_backend, model_name, max_num_batched_tokens,
prefix_caching, workload) beside vLLM's own keys, so records are identified without parsing names.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .commands import BACKENDS, BASELINE_BACKEND, PERCENTILES
from .workloads import rate_label


@dataclass(frozen=True)
class Metric:
    key: str  # the key in vLLM's result JSON
    label: str
    higher_is_better: bool = False


LATENCIES = (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2el", "E2EL"))
METRICS: tuple[Metric, ...] = tuple(
    Metric(f"p{p}_{key}_ms", f"{label} p{p} (ms)") for key, label in LATENCIES for p in PERCENTILES
) + (
    Metric("request_throughput", "requests/s", higher_is_better=True),
    Metric("output_throughput", "output tok/s", higher_is_better=True),
    Metric("total_token_throughput", "total tok/s", higher_is_better=True),
)


@dataclass(frozen=True, order=True)
class Scenario:
    """What a backend is compared on: everything about a run except the backend."""

    model: str
    chunk_size: int
    prefix_caching: bool
    workload: str
    request_rate: float
    max_concurrency: int | None

    @property
    def load_label(self) -> str:
        load = f"{rate_label(self.request_rate)} req/s"
        if self.max_concurrency is not None:
            load += f", ≤{self.max_concurrency} in flight"
        return load

    @property
    def title(self) -> str:
        caching = ", prefix caching" if self.prefix_caching else ""
        return f"{self.model} · chunk {self.chunk_size}{caching} · {self.workload} · {self.load_label}"


@dataclass
class Record:
    backend: str
    scenario: Scenario
    values: dict[str, float]
    completed: int
    failed: int
    path: Path
    date: str = ""  # vLLM's "date" (YYYYmmdd-HHMMSS): the newest of repeated runs wins


@dataclass
class Comparison:
    scenario: Scenario
    records: dict[str, Record] = field(default_factory=dict)  # by backend

    def ratio(self, backend: str, metric_key: str) -> float | None:
        """backend's value over FLASH_ATTN's; None where either is missing or the baseline is 0."""
        base = self.records.get(BASELINE_BACKEND)
        rec = self.records.get(backend)
        if base is None or rec is None:
            return None
        b, v = base.values.get(metric_key), rec.values.get(metric_key)
        if b is None or v is None or b == 0:
            return None
        return v / b


def _rate(value) -> float:
    return math.inf if value in ("inf", None) else float(value)


def _concurrency(value) -> int | None:
    return None if value in (None, "None") else int(value)


def record_from_json(data: dict, path: Path) -> Record:
    scenario = Scenario(
        model=data["model_name"],
        chunk_size=int(data["max_num_batched_tokens"]),
        prefix_caching=str(data.get("prefix_caching", False)) == "True",
        workload=data["workload"],
        request_rate=_rate(data.get("request_rate")),
        max_concurrency=_concurrency(data.get("max_concurrency")),
    )
    values = {m.key: float(data[m.key]) for m in METRICS if data.get(m.key) is not None}
    return Record(
        backend=data["attention_backend"], scenario=scenario, values=values,
        completed=int(data.get("completed", 0)), failed=int(data.get("failed", 0)), path=path,
        date=str(data.get("date", "")),
    )


def load_records(results_dir: Path) -> list[Record]:
    """Every harness result JSON anywhere under results_dir; other JSON files are skipped."""
    records = []
    for path in sorted(Path(results_dir).rglob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and "attention_backend" in data:
            records.append(record_from_json(data, path))
    return records


def compare(records: list[Record]) -> list[Comparison]:
    by_scenario: dict[Scenario, Comparison] = {}
    for rec in sorted(records, key=lambda r: r.date):  # a rerun replaces an earlier run
        by_scenario.setdefault(rec.scenario, Comparison(rec.scenario)).records[rec.backend] = rec
    return [by_scenario[s] for s in sorted(by_scenario)]


def ordered_backends(present) -> list[str]:
    """The given backend names: the baseline first, then the other known backends, then any others."""
    present = set(present)
    known = [BASELINE_BACKEND] + [b for b in BACKENDS if b != BASELINE_BACKEND]
    return [b for b in known if b in present] + sorted(present - set(known))


def cell(comparison: Comparison, backend: str, metric: Metric) -> str:
    """`123.4` for the baseline, `110.2 (0.89x)` for the others, `-` where there is no value."""
    value = comparison.records[backend].values.get(metric.key)
    if value is None:
        return "-"
    text = f"{value:.1f}" if value >= 10 else f"{value:.2f}"
    ratio = comparison.ratio(backend, metric.key)
    if backend != BASELINE_BACKEND and ratio is not None:
        text += f" ({ratio:.2f}x)"
    return text


def comparison_rows(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """The header and rows of one scenario's table: metrics down, backends across."""
    backends = ordered_backends(comparison.records)
    header = ["metric"] + backends
    rows = [[m.label] + [cell(comparison, b, m) for b in backends] for m in METRICS]
    rows.append(
        ["completed / failed"]
        + [f"{comparison.records[b].completed} / {comparison.records[b].failed}" for b in backends]
    )
    return header, rows


RATIO_NOTE = (
    f"Ratios are to {BASELINE_BACKEND} in the same scenario: below 1x is better for latencies, "
    "above 1x is better for throughputs."
)


def format_console(comparisons: list[Comparison]) -> str:
    blocks = [RATIO_NOTE]
    for comp in comparisons:
        header, rows = comparison_rows(comp)
        widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
        lines = [comp.scenario.title]
        for row in [header] + rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def format_markdown(comparisons: list[Comparison], failures: list[dict] | None = None) -> str:
    parts = ["# Serving benchmark results", "", RATIO_NOTE, ""]
    for comp in comparisons:
        header, rows = comparison_rows(comp)
        parts += [f"## {comp.scenario.title}", ""]
        parts.append("| " + " | ".join(header) + " |")
        parts.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
        parts += ["| " + " | ".join(row) + " |" for row in rows]
        parts.append("")
    if failures:
        parts += ["## Runs that failed or were skipped", "", "| run | status | reason |", "|---|---|---|"]
        parts += [
            f"| {f['run']} | {f['status']} | {f['reason'].replace('|', '/')} |" for f in failures
        ]
        parts.append("")
    return "\n".join(parts)
