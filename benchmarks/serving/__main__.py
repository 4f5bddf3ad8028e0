"""`python -m benchmarks.serving {run,report,soak,make-model}`: see --help of each."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from .commands import BACKENDS, DEFAULT_VLLM_CLI
from .model_dir import DEFAULT_MODEL_ROOT, available_models, make_model_dir
from .report import record_invocation, write_report
from .runner import Options
from .soak import run_soak
from .sweep import ServerSettings, describe_plan, plan, run_sweep
from .workloads import load_workload

DEFAULT_WORKLOADS = ["long-prefill", "mixed", "saturating"]


def _add_server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results-dir", type=Path, default=Path("benchmarks/results/serving"),
                   help="where result JSONs, logs, results.md and plots go (default: %(default)s)")
    p.add_argument("--vllm-cli", default=DEFAULT_VLLM_CLI,
                   help="how to invoke vLLM's CLI (default: %(default)r)")
    p.add_argument("--model-root", type=Path, default=DEFAULT_MODEL_ROOT,
                   help="where model directories are written (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="server port on 127.0.0.1")
    p.add_argument("--ready-timeout-s", type=float, default=900.0,
                   help="how long a server may take to answer /v1/models")
    p.add_argument("--run-timeout-s", type=float, default=900.0,
                   help="how long one `vllm bench serve` may run before it is killed")
    p.add_argument("--deadline-s", type=float, default=None,
                   help="wall-clock budget for this invocation: later runs are skipped, servers stopped")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-model-len", type=int, default=8192,
                   help="capped by each model's context; longer workloads are skipped")
    p.add_argument("--serve-args", default="",
                   help="extra `vllm serve` arguments, one shell-quoted string")


def _options(args) -> tuple[Options, ServerSettings]:
    opts = Options(
        results_dir=args.results_dir, vllm_cli=args.vllm_cli, model_root=args.model_root,
        port=args.port, ready_timeout_s=args.ready_timeout_s, run_timeout_s=args.run_timeout_s,
        deadline_s=args.deadline_s,
    )
    settings = ServerSettings(
        dtype=args.dtype, gpu_memory_utilization=args.gpu_memory_utilization,
        max_num_seqs=args.max_num_seqs, max_model_len=args.max_model_len,
        extra_args=tuple(shlex.split(args.serve_args)),
    )
    return opts, settings


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m benchmarks.serving", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="the backend comparison sweep, then the report")
    _add_server_args(run)
    run.add_argument("--models", nargs="+", default=["llama-3-8b"], choices=available_models())
    run.add_argument("--backends", nargs="+", default=list(BACKENDS))
    run.add_argument("--workloads", nargs="+", default=DEFAULT_WORKLOADS,
                     help="names in configs/workloads or YAML paths (default: %(default)s)")
    run.add_argument("--chunk-sizes", nargs="+", type=int, default=None,
                     help="only these of the workloads' chunk sizes")
    run.add_argument("--no-plots", action="store_true")
    run.add_argument("--dry-run", action="store_true",
                     help="print the servers and runs this would start, with their command lines")

    report = sub.add_parser("report", help="tables and plots from an existing results directory")
    report.add_argument("results_dir", type=Path)
    report.add_argument("--no-plots", action="store_true")

    soak = sub.add_parser("soak", help="1000+ mixed requests through one server, checked")
    _add_server_args(soak)
    soak.add_argument("--workload", default="soak")
    soak.add_argument("--model", default="llama-3-8b", choices=available_models())
    soak.add_argument("--backend", default="POD")
    soak.add_argument("--chunk-size", type=int, default=None,
                      help="default: the workload's first chunk size")
    soak.add_argument("--sample-interval-s", type=float, default=2.0)
    soak.add_argument("--warmup-s", type=float, default=60.0,
                      help="memory samples before this are not judged")
    soak.add_argument("--memory-tolerance-mib", type=int, default=256)

    make = sub.add_parser("make-model", help="write model directories (config + tokenizer)")
    make.add_argument("models", nargs="+", choices=available_models())
    make.add_argument("--model-root", type=Path, default=DEFAULT_MODEL_ROOT)
    return top


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    if args.command == "make-model":
        for model in args.models:
            print(make_model_dir(model, args.model_root))
        return 0
    if args.command == "report":
        print(write_report(args.results_dir, with_plots=not args.no_plots))
        return 0
    opts, settings = _options(args)
    if not getattr(args, "dry_run", False):
        record_invocation(opts.results_dir, argv)
    if args.command == "soak":
        found = run_soak(
            load_workload(args.workload), args.model, args.backend, args.chunk_size, settings, opts,
            sample_interval_s=args.sample_interval_s, warmup_s=args.warmup_s,
            tolerance_mib=args.memory_tolerance_mib,
        )
        print((opts.results_dir / "soak" / "soak.md").read_text(encoding="utf-8"))
        return 0 if found["passed"] else 1
    workloads = [load_workload(w) for w in args.workloads]
    groups, skipped = plan(args.models, args.backends, workloads, args.chunk_sizes, settings, opts)
    if args.dry_run:
        print(describe_plan(groups, skipped, opts))
        return 0
    outcomes = run_sweep(groups, skipped, opts)
    print(write_report(opts.results_dir, with_plots=not args.no_plots))
    return 1 if any(o.status == "failed" for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
