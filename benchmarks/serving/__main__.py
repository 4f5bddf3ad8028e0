"""`python -m benchmarks.serving {make-model,ratios,soak}`: what the serving benchmarks need beside
vLLM's own `vllm bench sweep serve` / `vllm bench sweep plot` (see benchmarks/serving/README.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .model_dir import DEFAULT_MODEL_ROOT, available_models, make_model_dir
from .ratios import write_ratios
from .soak import run_soak


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m benchmarks.serving", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)

    make = sub.add_parser("make-model", help="write model directories (config + tokenizer); print their paths")
    make.add_argument("models", nargs="+", choices=available_models())
    make.add_argument("--model-root", type=Path, default=DEFAULT_MODEL_ROOT)

    ratios = sub.add_parser("ratios", help="every backend against FLASH_ATTN: ratios.md and ratios.png")
    ratios.add_argument("results_dir", type=Path, help="a sweep's experiment directory (or a folder of them)")
    ratios.add_argument("--no-plot", action="store_true")

    soak = sub.add_parser("soak", help="run a sweep command while watching GPU memory, then check it")
    soak.add_argument("--dir", type=Path, required=True,
                      help="the experiment directory the command writes (vLLM's -o OUT/-e NAME)")
    soak.add_argument("--sample-interval-s", type=float, default=2.0)
    soak.add_argument("--warmup-s", type=float, default=60.0, help="memory samples before this are not judged")
    soak.add_argument("--memory-tolerance-mib", type=int, default=256)
    soak.add_argument("cmd", nargs=argparse.REMAINDER, help="-- then the sweep command, with --show-stdout")
    return top


def main(argv: list[str] | None = None) -> int:
    top = parser()
    args = top.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "make-model":
        for model in args.models:
            print(make_model_dir(model, args.model_root))
        return 0
    if args.command == "ratios":
        print(write_ratios(args.results_dir, with_plot=not args.no_plot), end="")
        return 0
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        top.error("soak: give the sweep command after --")
    if "--show-stdout" not in cmd:
        top.error("soak: the command must pass --show-stdout, so that the server's errors reach the log")
    if args.dir.exists():
        top.error(f"soak: {args.dir} exists; a soak judges only its own runs")
    found = run_soak(cmd, args.dir, sample_interval_s=args.sample_interval_s, warmup_s=args.warmup_s,
                     tolerance_mib=args.memory_tolerance_mib)
    print((args.dir / "soak.md").read_text(encoding="utf-8"), end="")
    return 0 if found["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
