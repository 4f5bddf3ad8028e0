"""Workloads: small YAML files under configs/workloads describing one kind of traffic.

A workload names the request shape (vLLM's `random` dataset: input/output lengths and their spread),
the load (one or more request rates, optionally capped by a concurrency limit), how many prompts, and
the server settings that belong to it: the chunk sizes (`--max-num-batched-tokens`) to run it at and
whether prefix caching is on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKLOADS_DIR = REPO_ROOT / "configs" / "workloads"

_FIELDS = {
    "name", "description", "input_len", "output_len", "range_ratio", "num_prompts",
    "request_rates", "max_concurrency", "chunk_sizes", "prefix_caching", "num_warmups",
}


@dataclass(frozen=True)
class Workload:
    name: str
    input_len: int
    output_len: int
    num_prompts: int
    chunk_sizes: tuple[int, ...]
    # vLLM's --random-range-ratio: lengths are drawn from [len * (1 - r), len * (1 + r)].
    input_range_ratio: float = 0.0
    output_range_ratio: float = 0.0
    # math.inf sends every request at time 0 (vLLM's default); several rates make a load sweep.
    request_rates: tuple[float, ...] = (math.inf,)
    max_concurrency: int | None = None
    prefix_caching: bool = False
    num_warmups: int = 4
    description: str = ""

    @property
    def max_input_len(self) -> int:
        return math.ceil(self.input_len * (1 + self.input_range_ratio))

    @property
    def max_output_len(self) -> int:
        return math.ceil(self.output_len * (1 + self.output_range_ratio))

    @property
    def max_total_len(self) -> int:
        return self.max_input_len + self.max_output_len


def parse_rate(value) -> float:
    """A request rate from YAML: a positive number, or infinity (`inf` or YAML's `.inf`)."""
    rate = float(value)
    if not rate > 0:
        raise ValueError(f"request rate must be positive or inf, got {value!r}")
    return rate


def _ratios(value) -> tuple[float, float]:
    if isinstance(value, dict):
        unknown = set(value) - {"input", "output"}
        if unknown:
            raise ValueError(f"range_ratio has unknown keys {sorted(unknown)}")
        pair = (float(value.get("input", 0.0)), float(value.get("output", 0.0)))
    else:
        pair = (float(value), float(value))
    if not all(0.0 <= r < 1.0 for r in pair):
        raise ValueError(f"range_ratio values must be in [0, 1), got {value!r}")
    return pair


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def workload_from_dict(data: dict, default_name: str) -> Workload:
    unknown = set(data) - _FIELDS
    if unknown:
        raise ValueError(f"workload {default_name}: unknown keys {sorted(unknown)}")
    missing = {"input_len", "output_len", "num_prompts", "chunk_sizes"} - set(data)
    if missing:
        raise ValueError(f"workload {default_name}: missing keys {sorted(missing)}")
    input_ratio, output_ratio = _ratios(data.get("range_ratio", 0.0))
    concurrency = data.get("max_concurrency")
    workload = Workload(
        name=str(data.get("name", default_name)),
        description=str(data.get("description", "")).strip(),
        input_len=int(data["input_len"]),
        output_len=int(data["output_len"]),
        num_prompts=int(data["num_prompts"]),
        chunk_sizes=tuple(int(c) for c in _as_list(data["chunk_sizes"])),
        input_range_ratio=input_ratio,
        output_range_ratio=output_ratio,
        request_rates=tuple(parse_rate(r) for r in _as_list(data.get("request_rates", "inf"))),
        max_concurrency=None if concurrency is None else int(concurrency),
        prefix_caching=bool(data.get("prefix_caching", False)),
        num_warmups=int(data.get("num_warmups", 4)),
    )
    if min(workload.input_len, workload.output_len, workload.num_prompts) < 1:
        raise ValueError(f"workload {workload.name}: lengths and num_prompts must be >= 1")
    if not workload.chunk_sizes or min(workload.chunk_sizes) < 1:
        raise ValueError(f"workload {workload.name}: chunk_sizes must be positive")
    return workload


def load_workload(name_or_path: str | Path) -> Workload:
    """Load by path, or by bare name from configs/workloads (`mixed` -> configs/workloads/mixed.yaml)."""
    import yaml

    path = Path(name_or_path)
    if not path.suffix:
        path = WORKLOADS_DIR / f"{path.name}.yaml"
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a workload is a YAML mapping")
    return workload_from_dict(data, default_name=path.stem)


def rate_label(rate: float) -> str:
    """How a rate appears in names and tables: `inf`, `2`, `0.5`."""
    return "inf" if math.isinf(rate) else f"{rate:g}"
