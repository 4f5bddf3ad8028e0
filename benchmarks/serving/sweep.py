"""The sweep: every backend x model x chunk size x workload x request rate, one server per setting.

Runs that share a server setting (backend, model, chunk size, prefix caching) share one server start,
since a start costs minutes of torch.compile and CUDA-graph capture. Ordering is model, then chunk
size, then backend, so a sweep cut short still leaves complete comparisons for what it reached.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

from . import gpu
from .commands import BenchRun, ServerSpec, bench_command, serve_command, serve_env
from .model_dir import load_model_config, make_model_dir
from .runner import Options, Outcome, Progress, run_bench, server_for, start_server, stop_server
from .server import ServerError
from .workloads import Workload

OUTCOMES_FILE = "outcomes.json"


@dataclass(frozen=True)
class ServerSettings:
    """Server flags that are the same for every server in a sweep."""

    dtype: str = "bfloat16"
    gpu_memory_utilization: float = 0.9
    max_num_seqs: int = 256
    # Capped by each model's max_position_embeddings; longer workloads are skipped, not truncated.
    max_model_len: int = 8192
    extra_args: tuple[str, ...] = ()


Group = tuple[ServerSpec, list[BenchRun]]


def plan(
    models: list[str], backends: list[str], workloads: list[Workload],
    chunk_sizes: list[int] | None, settings: ServerSettings, opts: Options,
) -> tuple[list[Group], list[Outcome]]:
    """The server groups to run, and the runs skipped up front (a workload longer than the context)."""
    groups: list[Group] = []
    skipped: list[Outcome] = []
    chunks = sorted({c for w in workloads for c in w.chunk_sizes})
    if chunk_sizes is not None:
        chunks = [c for c in chunks if c in chunk_sizes]
    for model in models:
        max_len = min(settings.max_model_len, load_model_config(model)["max_position_embeddings"])
        for chunk in chunks:
            for caching in sorted({w.prefix_caching for w in workloads if chunk in w.chunk_sizes}):
                for backend in backends:
                    spec = ServerSpec(
                        backend=backend, model=model, model_dir=Path(opts.model_root) / model,
                        chunk_size=chunk, max_model_len=max_len, prefix_caching=caching,
                        port=opts.port, dtype=settings.dtype,
                        gpu_memory_utilization=settings.gpu_memory_utilization,
                        max_num_seqs=settings.max_num_seqs, extra_args=settings.extra_args,
                    )
                    runs = _runs_for(spec, workloads, skipped)
                    if runs:
                        groups.append((spec, runs))
    return groups, skipped


def _runs_for(spec: ServerSpec, workloads: list[Workload], skipped: list[Outcome]) -> list[BenchRun]:
    """The runs of the workloads that belong on this server; those that cannot fit go to skipped."""
    runs = []
    for w in workloads:
        if spec.chunk_size not in w.chunk_sizes or w.prefix_caching != spec.prefix_caching:
            continue
        for rate in w.request_rates:
            run = BenchRun(spec, w, rate)
            if w.max_total_len > spec.max_model_len:
                reason = f"needs {w.max_total_len} tokens, max model len is {spec.max_model_len}"
                skipped.append(Outcome(run.name, "skipped", reason))
            else:
                runs.append(run)
    return runs


def describe_plan(groups: list[Group], skipped: list[Outcome], opts: Options) -> str:
    """What a sweep would do, as shell lines: each server, then its benchmark runs."""
    lines = []
    for spec, runs in groups:
        env = serve_env({}, spec.backend)
        prefix = "".join(f"{k}={v} " for k, v in env.items())
        lines += [f"# server {spec.name}", prefix + shlex.join(serve_command(opts.vllm_cli, spec))]
        lines += [shlex.join(bench_command(opts.vllm_cli, run, opts.runs_dir)) for run in runs]
        lines.append("")
    lines += [f"# skipped {o.run}: {o.reason}" for o in skipped]
    return "\n".join(lines)


def run_group(spec: ServerSpec, runs: list[BenchRun], opts: Options, progress: Progress) -> list[Outcome]:
    """One server start and all its runs; every run gets an Outcome, whatever fails."""
    if opts.remaining_s() <= 0:
        reason = "time budget (--deadline-s) used up"
        return _finished(progress, [Outcome(r.name, "skipped", reason) for r in runs])
    progress.say(f"server {spec.name}: {len(runs)} run(s)")
    make_model_dir(spec.model, opts.model_root)
    baseline = gpu.memory_used_mib()
    server = server_for(spec, opts)
    outcomes: list[Outcome] = []
    try:
        start_server(server, opts, progress)
        outcomes = [run_bench(run, server, opts, progress) for run in runs]
    except ServerError as err:
        outcomes = _finished(progress, [Outcome(r.name, "failed", str(err)) for r in runs])
    finally:
        warning = stop_server(server, baseline, progress)
    if warning:
        outcomes.append(Outcome(f"{spec.name} (server stop)", "warning", warning))
    return outcomes


def _finished(progress: Progress, outcomes: list[Outcome]) -> list[Outcome]:
    for outcome in outcomes:
        progress.finished(outcome)
    return outcomes


def load_outcomes(results_dir: Path) -> dict[str, dict]:
    path = Path(results_dir) / OUTCOMES_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def save_outcomes(results_dir: Path, outcomes: list[Outcome]) -> None:
    """Merge into outcomes.json, so sweeps split over several invocations add up."""
    merged = load_outcomes(results_dir)
    merged.update({o.run: o.to_dict() for o in outcomes})
    path = Path(results_dir) / OUTCOMES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def run_sweep(groups: list[Group], skipped: list[Outcome], opts: Options) -> list[Outcome]:
    progress = Progress(sum(len(runs) for _, runs in groups) + len(skipped))
    outcomes = _finished(progress, list(skipped))
    save_outcomes(opts.results_dir, outcomes)
    for spec, runs in groups:
        group_outcomes = run_group(spec, runs, opts, progress)
        outcomes += group_outcomes
        save_outcomes(opts.results_dir, group_outcomes)  # after each group: a killed sweep keeps its runs
    return outcomes
