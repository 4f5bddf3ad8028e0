"""Instruction mix of a kernel from Nsight Compute's per-instruction source page, for comparing two
kernels by what they execute (METHOD.md: count before changing):

    ncu -i run.ncu-rep --page source --print-source sass --csv > run_sass.csv
    python -m benchmarks.sass_mix run_sass.csv [other_sass.csv ...]

Per file: executed warp instructions by opcode (and the share of stall samples on them), then the
same for the kernel's hot loop body, taken as the SASS lines executed exactly as often as the most
frequent per-line count weighs (the unrolled main loop runs once per tile, so its lines share one
count): its length is the loop's instruction cost per warp per tile.
"""

from __future__ import annotations

import argparse
import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Line:
    source: str
    executed: int
    samples: int

    @property
    def opcode(self) -> str:
        words = self.source.split()
        op = words[1] if words[0].startswith("@") and len(words) > 1 else words[0]
        return op.split(".")[0]


def read_lines(path: Path) -> list[Line]:
    rows = list(csv.reader(path.open(encoding="utf-8", errors="replace")))
    header_at = next(i for i, r in enumerate(rows) if "Source" in r and "Instructions Executed" in r)
    header = rows[header_at]
    src, exe = header.index("Source"), header.index("Instructions Executed")
    smp = header.index("Warp Stall Sampling (All Samples)")
    lines = []
    for r in rows[header_at + 1:]:
        try:
            lines.append(Line(r[src].strip(), int(r[exe].replace(",", "")), int(r[smp].replace(",", ""))))
        except (IndexError, ValueError):
            continue
    return [ln for ln in lines if ln.source]


def hot_loop(lines: list[Line]) -> tuple[int, list[Line]]:
    """The per-line execution count that accounts for the most instructions, and its lines."""
    weight = Counter()
    for ln in lines:
        weight[ln.executed] += ln.executed
    count = max(weight, key=weight.get)
    return count, [ln for ln in lines if ln.executed == count]


def mix(lines: list[Line]) -> list[tuple[str, int, int]]:
    executed, samples = Counter(), Counter()
    for ln in lines:
        executed[ln.opcode] += ln.executed
        samples[ln.opcode] += ln.samples
    return [(op, n, samples[op]) for op, n in executed.most_common()]


def report(path: Path, top: int = 20) -> str:
    lines = read_lines(path)
    total = sum(ln.executed for ln in lines) or 1
    total_samples = sum(ln.samples for ln in lines) or 1
    out = [f"{path.name}: {total / 1e6:.1f} M warp instructions executed, {total_samples} stall samples"]
    for op, n, s in mix(lines)[:top]:
        out.append(f"  {op:12s} {n / 1e6:8.1f} M {100 * n / total:5.1f}%   stalls {100 * s / total_samples:5.1f}%")
    count, body = hot_loop(lines)
    out.append(f"  hot loop: {len(body)} instructions per pass, {count} passes "
               f"({100 * count * len(body) / total:.0f}% of all executed)")
    ops = Counter(ln.opcode for ln in body)
    out.append("    " + ", ".join(f"{op} {k}" for op, k in ops.most_common(top)))
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("csv", nargs="+", type=Path)
    ap.add_argument("--top", type=int, default=20)
    args = ap.parse_args(argv)
    print("\n\n".join(report(p, args.top) for p in args.csv))


if __name__ == "__main__":
    main()
