"""Instruction mix of a kernel, for comparing kernels or builds by what they execute. Two sources:

    ncu -i run.ncu-rep --page source --print-source sass --csv > run_sass.csv
    python -m benchmarks.kernel.sass_mix run_sass.csv [other_sass.csv ...]

executed warp instructions by opcode (and the share of stall samples on them), then the same for
the kernel's hot loop body, taken as the SASS lines executed exactly as often as the most frequent
per-line count weighs (the unrolled main loop runs once per tile, so its lines share one count):
its length is the loop's instruction cost per warp per tile. With --loops, per innermost loop
(a backward branch with no loop inside; in the warp-specialized kernel each role's key loop is
one), its executed instructions and stall samples by reason: where each role's warps wait
(docs/design.md, "What bounds the overlap"). And, with no GPU,

    cuobjdump -sass kernel.cubin > kernel.sass      (benchmarks/kernel/sass_count.sh does this)
    python -m benchmarks.kernel.sass_mix --static kernel.sass --function Lb1E

how each softmax rescale factor's exp2 argument is computed (rescale_factor_inputs), then the
static loops (backward branches) of the function whose name contains the given text that
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
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Line:
    source: str
    executed: int
    samples: int
    address: int = -1
    reasons: dict[str, int] = field(default_factory=dict)  # stall samples by reason, when exported

    @property
    def words(self) -> list[str]:
        """The instruction's words without its predicate (@P0, @!P1)."""
        words = self.source.split()
        return words[1:] if words[0].startswith("@") and len(words) > 1 else words

    @property
    def opcode(self) -> str:
        return self.words[0].split(".")[0]


def read_lines(path: Path) -> list[Line]:
    rows = list(csv.reader(path.open(encoding="utf-8", errors="replace")))
    header_at = next(i for i, r in enumerate(rows) if "Source" in r and "Instructions Executed" in r)
    header = rows[header_at]
    src, exe = header.index("Source"), header.index("Instructions Executed")
    smp = header.index("Warp Stall Sampling (All Samples)")
    addr = header.index("Address") if "Address" in header else None
    # Per-reason columns (stall_long_sb, ...: all samples; their "(Not Issued)" twins are skipped).
    reasons = [(i, c[len("stall_"):]) for i, c in enumerate(header) if re.fullmatch(r"stall_\w+", c)]
    count = lambda text: int(text.replace(",", ""))
    lines = []
    for r in rows[header_at + 1:]:
        try:
            lines.append(Line(r[src].strip(), count(r[exe]), count(r[smp]),
                              int(r[addr], 16) if addr is not None else -1,
                              {name: count(r[i] or "0") for i, name in reasons}))
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


# What a loop's instructions say it is, first match wins.
LOOP_KINDS = (("HGMMA", "wgmma"), ("HMMA", "mma.sync"), ("LDGSTS", "cp.async"))


def loop_report(path: Path, top: int = 3) -> str:
    """Executed instructions and stall samples by reason of each innermost loop of an ncu source
    CSV, the busiest first, with its most sampled lines."""
    lines = sorted((ln for ln in read_lines(path) if ln.address >= 0), key=lambda ln: ln.address)
    if not lines:
        return f"{path.name}: no addresses in the export"
    at = {ln.address: i for i, ln in enumerate(lines)}
    bodies = [lines[at[start]:at[end] + 1]
              for start, end in innermost(code_loops([(ln.address, ln.source) for ln in lines]))]
    out = []
    for executed, body in sorted(((sum(ln.executed for ln in b), b) for b in bodies),
                                 key=lambda eb: -eb[0]):
        if not executed:
            continue
        start, end, samples = body[0].address, body[-1].address, sum(ln.samples for ln in body)
        ops = Counter(ln.opcode for ln in body)
        kind = next((name for op, name in LOOP_KINDS if ops[op]), "other")
        out.append(f"{path.name}: loop {start:#x}-{end:#x} ({kind}): {len(body)} instructions, "
                   f"{executed / 1e6:.1f} M executed, {samples} stall samples")
        by_reason = Counter()
        for ln in body:
            by_reason.update(ln.reasons)
        if by_reason and samples:
            out.append("    " + ", ".join(f"{name} {100 * n / samples:.0f}%"
                                          for name, n in by_reason.most_common() if n))
        for ln in sorted(body, key=lambda ln: -ln.samples)[:top]:
            out.append(f"    {ln.samples:8d}  {ln.source}")
    return "\n".join(out) or f"{path.name}: no executed loop"


def code_loops(code: list[tuple[int, str]]) -> list[tuple[int, int]]:
    """(first, last address) of each loop: a branch back to an address of the code."""
    addresses = {a for a, _ in code}
    loops = []
    for a, ins in code:
        target = branch_target(ins)
        if target is not None and target < a and target in addresses:
            loops.append((target, a))
    return loops


def innermost(loops: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return [(s, e) for s, e in loops
            if not any((s, e) != (s2, e2) and s <= s2 and e2 <= e for s2, e2 in loops)]


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
    return [(start, end, [c for _, c in code[at[start]:at[end] + 1]]) for start, end in code_loops(code)]


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


def rescale_factor_inputs(code: list[tuple[int, str]]) -> Counter:
    """For each test of a softmax rescale factor against 1 (alpha = exp2(m_old * scale - base)),
    the opcode that computed exp2's argument: FADD when both products were rounded, so that a kept
    max gives alpha exactly 1 and the rescale is skipped; FFMA when the compiler fused one product
    into the subtraction, so that alpha carries base's rounding error and nearly every tile
    rescales (docs/design.md, "The rescale slack")."""
    ins = [i for _, i in code]

    def written(i: int, reg: str) -> int | None:  # the last instruction before i that writes reg
        for k in range(i - 1, max(i - 400, -1), -1):
            words = Line(ins[k], 1, 0).words
            if len(words) > 1 and words[1].rstrip(",") == reg:
                return k
        return None

    found = Counter()
    for i, text in enumerate(ins):
        test = re.search(r"FSETP\.NEU\S* P\d, PT, (R\d+), 1, PT", text)
        exp2 = written(i, test.group(1)) if test else None
        if exp2 is None or "MUFU.EX2" not in ins[exp2]:
            continue
        arg = written(exp2, re.findall(r"R\d+", ins[exp2])[1])
        found[Line(ins[arg], 1, 0).opcode if arg is not None else "?"] += 1
    return found


def static_report(path: Path, function: str, top: int = 20, paths: bool = False) -> str:
    out = []
    sass = path.read_text(encoding="utf-8")
    factors = rescale_factor_inputs(function_code(sass, function))
    if factors:
        out.append(f"{path.name}: rescale factors from " + ", ".join(f"{op} {n}" for op, n in factors.items())
                   + ("" if set(factors) == {"FADD"} else "  <- not FADD: alpha is not exactly 1 when the max is kept"))
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
    ap.add_argument("--loops", action="store_true",
                    help="for ncu CSVs: each innermost loop's stall samples by reason")
    ap.add_argument("--top", type=int, default=20)
    args = ap.parse_args(argv)
    if args.static:
        print("\n\n".join(static_report(p, args.function, args.top, args.paths) for p in args.files))
    elif args.loops:
        print("\n\n".join(loop_report(p) for p in args.files))
    else:
        print("\n\n".join(report(p, args.top) for p in args.files))


if __name__ == "__main__":
    main()
