"""Soak: many mixed requests through one POD server under vLLM's sweep, watched and then checked.

`python -m benchmarks.serving soak --dir EXPERIMENT_DIR -- COMMAND...` runs COMMAND (a
`vllm bench sweep serve` with --show-stdout, e.g. benchmarks/serving/sweep.sh) with its output in
a log (soak.log) while it samples GPU memory with nvidia-smi, and passes when every request
of every run under EXPERIMENT_DIR completed, the output shows no error, and GPU memory stays within
a tolerance once warm-up is over: vLLM allocates its KV cache up front, so growth after warm-up
would be a leak. Writes soak.json, soak.md and memory.png beside the runs.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import gpu, logscan

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


def run_results(experiment_dir: Path) -> list[dict]:
    """Every measured run's result under a sweep's experiment directory (run=N.json; warm-ups,
    numbered -1, are left out)."""
    results = []
    for path in sorted(Path(experiment_dir).rglob("run=*.json")):
        result = json.loads(path.read_text(encoding="utf-8"))
        if result.get("run_number", 0) >= 0:
            results.append(result)
    return results


def verdict(exit_code: int, results: list[dict], log_errors: list[str], memory: MemoryCheck) -> dict:
    """The soak's findings from the command's exit code, the runs' results, its output and memory."""
    expected = sum(int(r.get("num_prompts", 0)) for r in results)
    completed = sum(int(r.get("completed", 0)) for r in results)
    failed = sum(int(r.get("failed", 0)) for r in results)
    checks = {
        "the sweep finished": exit_code == 0,
        "all requests completed": bool(results) and completed == expected and failed == 0,
        "no errors in the output": not log_errors,
        "GPU memory flat after warm-up": memory.flat,
    }
    return {
        "passed": all(v is True for v in checks.values()),
        "checks": checks,
        "runs": len(results),
        "requests": expected,
        "completed": completed,
        "failed": failed,
        "log_errors": log_errors[:50],
        "log_error_count": len(log_errors),
        "memory": {
            "warmup_s": memory.warmup_s,
            "tolerance_mib": memory.tolerance_mib,
            "spread_after_warmup_mib": memory.spread_mib,
            "samples": memory.samples,
        },
    }


def soak_markdown(found: dict) -> str:
    mem = found["memory"]
    lines = ["# Soak", "", f"**{'PASSED' if found['passed'] else 'FAILED'}**", "",
             "| check | result |", "|---|---|"]
    lines += [f"| {check} | {'pass' if ok else ('not measured' if ok is None else 'FAIL')} |"
              for check, ok in found["checks"].items()]
    lines += [
        "",
        f"- runs: {found['runs']}; requests: {found['requests']}, completed {found['completed']}, "
        f"failed {found['failed']}",
        f"- error lines in the output: {found['log_error_count']}",
        f"- GPU memory spread after {mem['warmup_s']:g} s warm-up: {mem['spread_after_warmup_mib']} MiB"
        f" (tolerance {mem['tolerance_mib']} MiB, {len(mem['samples'])} samples)",
    ]
    lines += [f"    {line}" for line in found["log_errors"][:10]]
    return "\n".join(lines) + "\n"


def memory_timeline(samples: list[tuple[float, int]], warmup_s: float, out_path: Path) -> Path:
    """GPU memory over the soak, with the warm-up period shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    if samples:
        ts, mib = zip(*samples)
        ax.plot(ts, mib, marker=".", linewidth=1)
    ax.axvspan(0, warmup_s, color="grey", alpha=0.2, label="warm-up")
    ax.set_xlabel("seconds since the soak started")
    ax.set_ylabel("GPU memory used (MiB)")
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def run_soak(command: list[str], experiment_dir: Path, *, sample_interval_s: float = 2.0,
             warmup_s: float = 60.0, tolerance_mib: int = 256) -> dict:
    experiment_dir = Path(experiment_dir)
    # vLLM's sweep refuses an experiment directory that exists: the log waits beside it.
    experiment_dir.parent.mkdir(parents=True, exist_ok=True)
    running_log = experiment_dir.parent / f".{experiment_dir.name}.soak.log"
    sampler = MemorySampler(sample_interval_s)
    sampler.start()
    try:
        with open(running_log, "wb") as log:
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
    finally:
        samples = sampler.stop()
    experiment_dir.mkdir(exist_ok=True)
    log_path = running_log.replace(experiment_dir / "soak.log")
    memory = MemoryCheck(warmup_s, tolerance_mib, samples)
    found = verdict(code, run_results(experiment_dir), logscan.error_lines(logscan.read_from(log_path)), memory)
    found["command"] = command
    (experiment_dir / "soak.json").write_text(json.dumps(found, indent=2) + "\n", encoding="utf-8")
    (experiment_dir / "soak.md").write_text(soak_markdown(found), encoding="utf-8")
    try:
        memory_timeline(samples, warmup_s, experiment_dir / "memory.png")
    except ImportError:
        pass  # no matplotlib: soak.json has the samples
    return found
