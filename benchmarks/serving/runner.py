"""Running things for the sweep and the soak: a server per ServerSpec, a bounded bench per BenchRun.

A failed run becomes an Outcome rather than an exception, so one bad run never stops the runs after
it; a failed server start raises ServerError, which the caller turns into outcomes for its runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import gpu, logscan
from .commands import DEFAULT_VLLM_CLI, BenchRun, ServerSpec, bench_command, serve_command, serve_env
from .model_dir import DEFAULT_MODEL_ROOT
from .server import ServerProcess


@dataclass
class Options:
    results_dir: Path
    vllm_cli: str = DEFAULT_VLLM_CLI
    model_root: Path = DEFAULT_MODEL_ROOT
    port: int = 8000
    ready_timeout_s: float = 900.0
    run_timeout_s: float = 900.0
    # Wall-clock budget for the whole invocation (a GPU-machine call has a hard limit); None: none.
    deadline_s: float | None = None
    started_at: float = field(default_factory=time.monotonic)

    @property
    def runs_dir(self) -> Path:
        return self.results_dir / "runs"

    @property
    def logs_dir(self) -> Path:
        return self.results_dir / "logs"

    def remaining_s(self) -> float:
        if self.deadline_s is None:
            return float("inf")
        return self.deadline_s - (time.monotonic() - self.started_at)


@dataclass
class Outcome:
    run: str
    status: str  # "ok", "failed", "skipped", or "warning" (about a server, not a run)
    reason: str = ""
    result: str | None = None  # the result JSON, relative to the results directory
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


class Progress:
    """Where a long sweep is: one line per step on stderr, a heartbeat while something waits."""

    HEARTBEAT_S = 30.0

    def __init__(self, total_runs: int):
        self.total = total_runs
        self.done = 0
        self.started = time.monotonic()
        self._last_beat = 0.0

    def say(self, message: str) -> None:
        elapsed = _duration(time.monotonic() - self.started)
        print(f"[{self.done:>3}/{self.total}] {elapsed:>8}  {message}", file=sys.stderr, flush=True)

    def heartbeat(self, what: str, waited_s: float) -> None:
        if waited_s - self._last_beat >= self.HEARTBEAT_S or waited_s < self._last_beat:
            self._last_beat = waited_s
            self.say(f"  … {what} ({_duration(waited_s)})")

    def finished(self, outcome: Outcome) -> None:
        self.done += 1
        self._last_beat = 0.0
        detail = f": {outcome.reason}" if outcome.reason else ""
        self.say(f"{outcome.status.upper():7} {outcome.run} in {_duration(outcome.seconds)}{detail}")


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def server_for(spec: ServerSpec, opts: Options) -> ServerProcess:
    return ServerProcess(
        serve_command(opts.vllm_cli, spec),
        serve_env(dict(os.environ), spec.backend),
        opts.logs_dir / f"{spec.name}.server.log",
        spec.base_url,
    )


def start_server(server: ServerProcess, opts: Options, progress: Progress) -> None:
    """Start the server and wait until it answers; raises ServerError."""
    progress.say(f"starting server (log: {server.log_path})")
    server.start()
    timeout = min(opts.ready_timeout_s, opts.remaining_s())
    waited = server.wait_ready(timeout, on_wait=lambda s: progress.heartbeat("waiting for server", s))
    progress.say(f"server ready after {_duration(waited)}")


def stop_server(server: ServerProcess, gpu_baseline_mib: int | None, progress: Progress) -> str:
    """Stop the server and check its GPU memory came back; returns a warning, or ''."""
    server.stop()
    freed, used = gpu.wait_memory_freed(gpu_baseline_mib)
    if freed is False:
        warning = f"GPU memory not freed after stop: {used} MiB in use, {gpu_baseline_mib} MiB before"
        progress.say(warning)
        return warning
    return ""


def _run_bounded(argv: list[str], log_path: Path, timeout_s: float, progress: Progress) -> int | None:
    """Run argv with output to log_path; kill its process group after timeout_s (then None)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(log_path, "wb") as log:
        log.write(f"$ {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        while True:
            try:
                return proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                waited = time.monotonic() - start
                if waited >= timeout_s:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    return None
                progress.heartbeat("benchmark running", waited)


def run_bench(
    run: BenchRun, server: ServerProcess, opts: Options, progress: Progress,
    *, save_detailed: bool = False,
) -> Outcome:
    start = time.monotonic()
    if opts.remaining_s() <= 0:
        outcome = Outcome(run.name, "skipped", "time budget (--deadline-s) used up")
    elif not server.alive():
        reason = logscan.failure_reason(server.log_text(), "server died before this run")
        outcome = Outcome(run.name, "failed", reason)
    else:
        outcome = _bench(run, server, opts, progress, save_detailed)
    outcome.seconds = time.monotonic() - start
    progress.finished(outcome)
    return outcome


def _bench(
    run: BenchRun, server: ServerProcess, opts: Options, progress: Progress, save_detailed: bool
) -> Outcome:
    result_path = opts.runs_dir / f"{run.name}.json"
    result_path.unlink(missing_ok=True)  # never report a stale result from an earlier sweep
    bench_log = opts.logs_dir / f"{run.name}.bench.log"
    server_offset = server.log_size()
    progress.say(f"running {run.name}")
    timeout = min(opts.run_timeout_s, opts.remaining_s())
    argv = bench_command(opts.vllm_cli, run, opts.runs_dir, save_detailed=save_detailed)
    code = _run_bounded(argv, bench_log, timeout, progress)
    server_text = server.log_text(server_offset)
    if code is None:
        return Outcome(run.name, "failed", f"benchmark killed after {timeout:.0f} s")
    if code != 0:
        last = logscan.tail(logscan.read_from(bench_log), 1).strip()[:300]
        reason = logscan.failure_reason(server_text, f"benchmark exited {code} ({last})")
        return Outcome(run.name, "failed", reason)
    if not result_path.exists():
        return Outcome(run.name, "failed", "benchmark wrote no result JSON")
    result = str(result_path.relative_to(opts.results_dir))
    data = json.loads(result_path.read_text(encoding="utf-8"))
    failed = int(data.get("failed", 0))
    if failed:
        total = failed + int(data.get("completed", 0))
        reason = logscan.failure_reason(server_text, f"{failed} of {total} requests failed")
        return Outcome(run.name, "failed", reason, result)
    return Outcome(run.name, "ok", result=result)
