"""Instruction mix of a kernel, for comparing kernels or builds by what they execute. Two sources:

    ncu -i run.ncu-rep --page source --print-source sass --csv > run_sass.csv
    python -m benchmarks.kernel.sass_mix run_sass.csv [other_sass.csv ...]

executed warp instructions by opcode (and the share of stall samples on them), then the same for
the kernel's hot loop body, taken as the SASS lines executed exactly as often as the most frequent
per-line count weighs (the unrolled main loop runs once per tile, so its lines share one count):
its length is the loop's instruction cost per warp per tile. And, with no GPU,

    cuobjdump -sass kernel.cubin > kernel.sass      (benchmarks/kernel/sass_count.sh does this)
    python -m benchmarks.kernel.sass_mix --static kernel.sass --function Lb1E

the static loops (backward branches) of the function whose name contains the given text that
issue wgmma, with their length and opcode counts: both tile paths of a loop body are counted,
so it bounds, not measures, what a pass executes. With --paths, also each path a pass can take
through the loop body (which forward branches it takes) and its length: what one pass executes
on that path, e.g. an unmasked tile without a rescale.
"""

from __future__ import annotations

import argparse
import csv
import re
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


def function_code(sass: str, function: str) -> list[tuple[int, str]]:
    """(address, instruction) of `function` in a cuobjdump -sass listing."""
    bodies = [f for f in sass.split("Function : ")[1:] if function in f.split("\n", 1)[0]]
    if not bodies:
        raise SystemExit(f"no function containing {function!r} in the listing")
    return [(int(a, 16), ins.strip()) for a, ins in
            re.findall(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", bodies[0])]


def branch_target(ins: str) -> int | None:
    target = re.search(r"\bBRA\b.*?0x([0-9a-f]+)\s*$", ins)
    return int(target.group(1), 16) if target else None


def static_loops(sass: str, function: str) -> list[tuple[int, int, list[str]]]:
    """(start, end, instructions) of each loop in `function` of a cuobjdump -sass listing."""
    code = function_code(sass, function)
    at = {a: i for i, (a, _) in enumerate(code)}
    loops = []
    for i, (a, ins) in enumerate(code):
        target = branch_target(ins)
        if target is not None and target < a and target in at:
            first = at[target]
            loops.append((code[first][0], a, [c for _, c in code[first:i + 1]]))
    return loops


def loop_paths(code: list[tuple[int, str]], start: int, end: int,
               limit: int = 64) -> list[tuple[int, tuple[int, ...]]] | None:
    """Each way one pass goes from the loop's first instruction to its backward branch at `end`:
    (instructions executed, addresses of the forward branches taken), shortest first; None when
    there are more than `limit` (an outer loop). A predicated branch forks; passes that leave the
    loop are not counted."""
    at = {a: i for i, (a, _) in enumerate(code)}
    paths, todo = [], [(at[start], 0, ())]
    while todo:
        if len(paths) + len(todo) > limit:
            return None
        i, n, taken = todo.pop()
        while True:
            a, ins = code[i]
            n += 1
            if a == end:
                paths.append((n, taken))
                break
            target = branch_target(ins)
            if target is None:
                i += 1
                continue
            inside = start <= target <= end and target in at
            if ins.startswith("@"):  # predicated: either way
                if inside and target > a:
                    todo.append((at[target], n, taken + (a,)))
                i += 1
            elif inside and target > a:
                i, taken = at[target], taken + (a,)
            else:
                break  # leaves the loop
    return sorted(paths)


def static_report(path: Path, function: str, top: int = 20, paths: bool = False) -> str:
    out = []
    sass = path.read_text(encoding="utf-8")
    for start, end, body in static_loops(sass, function):
        ops = Counter(Line(ins, 1, 0).opcode for ins in body)
        if ops["HGMMA"]:
            out.append(f"{path.name}: loop {start:#x}-{end:#x}: {len(body)} instructions, "
                       f"{ops['HGMMA']} HGMMA")
            out.append("    " + ", ".join(f"{op} {k}" for op, k in ops.most_common(top)))
            if paths:
                ways = loop_paths(function_code(sass, function), start, end)
                if ways is None:
                    out.append("    (too many paths to list: a loop around other loops)")
                for n, taken in ways or []:
                    out.append(f"    path of {n} instructions, branches taken at: "
                               + (", ".join(f"{a:#x}" for a in taken) or "none"))
    return "\n".join(out) or f"{path.name}: no loop issuing wgmma in {function}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", type=Path, help="ncu source-page CSVs, or SASS with --static")
    ap.add_argument("--static", action="store_true", help="the files are cuobjdump -sass listings")
    ap.add_argument("--function", default="Lb1E", help="with --static: text in the function's name "
                    "(default: the Hopper configuration, TileConfig<..., true>)")
    ap.add_argument("--paths", action="store_true",
                    help="with --static: each path through each loop body and its length")
    ap.add_argument("--top", type=int, default=20)
    args = ap.parse_args(argv)
    if args.static:
        print("\n\n".join(static_report(p, args.function, args.top, args.paths) for p in args.files))
    else:
        print("\n\n".join(report(p, args.top) for p in args.files))


if __name__ == "__main__":
    main()
