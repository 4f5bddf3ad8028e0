"""Soak: many mixed requests through one server, then three checks.

Passes when every request completed, the server log shows no error, and GPU memory (sampled with
nvidia-smi during the run) stays within a tolerance once warm-up is over: vLLM allocates its KV cache
up front, so growth after warm-up would be a leak.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from . import gpu, logscan
from .model_dir import make_model_dir
from .runner import Options, Progress, run_bench, server_for, start_server, stop_server
from .server import ServerError
from .sweep import ServerSettings, plan, save_outcomes
from .workloads import Workload

MAX_SAMPLES = 100_000  # bounds the sampler however long the run goes


class MemorySampler(threading.Thread):
    """Samples GPU memory every interval_s seconds until stopped: (seconds since start, MiB)."""

    def __init__(self, interval_s: float):
        super().__init__(daemon=True)
        self.interval_s = interval_s
        self.samples: list[tuple[float, int]] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self._stop_event.is_set() and len(self.samples) < MAX_SAMPLES:
            used = gpu.memory_used_mib()
            if used is None:
                return
            self.samples.append((round(time.monotonic() - start, 2), used))
            self._stop_event.wait(self.interval_s)

    def stop(self) -> list[tuple[float, int]]:
        self._stop_event.set()
        self.join()
        return self.samples


@dataclass
class MemoryCheck:
    warmup_s: float
    tolerance_mib: int
    samples: list[tuple[float, int]] = field(default_factory=list)

    @property
    def after_warmup(self) -> list[int]:
        return [mib for t, mib in self.samples if t >= self.warmup_s]

    @property
    def spread_mib(self) -> int | None:
        values = self.after_warmup
        return max(values) - min(values) if len(values) >= 2 else None

    @property
    def flat(self) -> bool | None:
        """None when there was nothing to judge (no nvidia-smi, or a run shorter than warm-up)."""
        spread = self.spread_mib
        return None if spread is None else spread <= self.tolerance_mib


def without_per_request(result: dict) -> dict:
    """The result JSON without its per-request lists (lengths, latencies, texts, errors: a few MB for
    1000 requests), as `run` saves it; the soak's verdict keeps what it needs of them."""
    n = result.get("num_prompts")
    return {k: v for k, v in result.items() if not (isinstance(v, list) and len(v) == n)}


def verdict(result: dict | None, num_prompts: int, log_errors: list[str], memory: MemoryCheck) -> dict:
    """The soak's findings from the result JSON (saved with --save-detailed) and the checks."""
    result = result or {}
    completed = int(result.get("completed", 0))
    failed = int(result.get("failed", 0))
    errors = Counter(e for e in result.get("errors", []) if e)
    checks = {
        "all requests completed": completed == num_prompts and failed == 0,
        "no errors in server log": not log_errors,
        "GPU memory flat after warm-up": memory.flat,
    }
    return {
        "passed": all(v is True for v in checks.values()),
        "checks": checks,
        "requests": num_prompts,
        "completed": completed,
        "failed": failed,
        "request_errors": dict(errors.most_common(20)),
        "server_log_errors": log_errors[:50],
        "server_log_error_count": len(log_errors),
        "memory": {
            "warmup_s": memory.warmup_s,
            "tolerance_mib": memory.tolerance_mib,
            "spread_after_warmup_mib": memory.spread_mib,
            "samples": memory.samples,
        },
    }


def soak_markdown(name: str, found: dict) -> str:
    mem = found["memory"]
    lines = [
        f"# Soak: {name}", "",
        f"**{'PASSED' if found['passed'] else 'FAILED'}**", "",
        "| check | result |", "|---|---|",
    ]
    lines += [
        f"| {check} | {'pass' if ok else ('not measured' if ok is None else 'FAIL')} |"
        for check, ok in found["checks"].items()
    ]
    lines += [
        "",
        f"- requests: {found['requests']}, completed {found['completed']}, failed {found['failed']}",
        f"- server log error lines: {found['server_log_error_count']}",
        f"- GPU memory spread after {mem['warmup_s']:g} s warm-up: {mem['spread_after_warmup_mib']} MiB"
        f" (tolerance {mem['tolerance_mib']} MiB, {len(mem['samples'])} samples)",
    ]
    if found["server_stop_warning"]:
        lines.append(f"- {found['server_stop_warning']}")
    lines += [f"- request error `{e}`: {n}" for e, n in found["request_errors"].items()]
    lines += [f"    {line}" for line in found["server_log_errors"][:10]]
    return "\n".join(lines) + "\n"


def run_soak(
    workload: Workload, model: str, backend: str, chunk_size: int | None,
    settings: ServerSettings, opts: Options, *,
    sample_interval_s: float = 2.0, warmup_s: float = 60.0, tolerance_mib: int = 256,
) -> dict:
    chunks = [chunk_size] if chunk_size else [workload.chunk_sizes[0]]
    groups, skipped = plan([model], [backend], [workload], chunks, settings, opts)
    if skipped or not groups:
        raise ValueError(f"soak workload does not fit {model}: {skipped[0].reason if skipped else chunks}")
    spec, runs = groups[0]
    run = runs[0]  # the soak is one run: the workload's first request rate
    progress = Progress(1)
    make_model_dir(spec.model, opts.model_root)
    baseline = gpu.memory_used_mib()
    server = server_for(spec, opts)
    sampler = MemorySampler(sample_interval_s)
    result, log_text = None, ""
    try:
        start_server(server, opts, progress)
        sampler.start()
        outcome = run_bench(run, server, opts, progress, save_detailed=True)
        # Read the log before stopping: shutdown messages are not the soak's errors.
        log_text = server.log_text()
        if outcome.result:
            path = opts.results_dir / outcome.result
            result = json.loads(path.read_text(encoding="utf-8"))
            path.write_text(json.dumps(without_per_request(result), indent=2) + "\n", encoding="utf-8")
    except ServerError as err:
        log_text = f"ERROR server did not start: {err}\n" + server.log_text()
        outcome = None
    finally:
        samples = sampler.stop() if sampler.is_alive() else sampler.samples
        warning = stop_server(server, baseline, progress)
    if outcome:
        save_outcomes(opts.results_dir, [outcome])
    memory = MemoryCheck(warmup_s, tolerance_mib, samples)
    found = verdict(result, workload.num_prompts, logscan.error_lines(log_text), memory)
    found["run"] = run.name
    found["outcome"] = outcome.to_dict() if outcome else None
    found["server_stop_warning"] = warning
    out_dir = opts.results_dir / "soak"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "soak.json").write_text(json.dumps(found, indent=2) + "\n", encoding="utf-8")
    (out_dir / "soak.md").write_text(soak_markdown(run.name, found), encoding="utf-8")
    try:
        from .plots import memory_timeline

        memory_timeline(samples, warmup_s, out_dir / "memory.png", f"GPU memory — {run.name}")
    except ImportError:
        pass  # matplotlib missing on this machine: soak.json has the samples
    return found
