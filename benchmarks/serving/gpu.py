"""GPU memory as nvidia-smi reports it; every function degrades to None where there is no nvidia-smi."""

from __future__ import annotations

import shutil
import subprocess


def _query(fields: str, units: bool = True) -> list[str] | None:
    """One line per GPU of `nvidia-smi --query-gpu=FIELDS`; None without a working nvidia-smi."""
    if shutil.which("nvidia-smi") is None:
        return None
    fmt = "csv,noheader" if units else "csv,noheader,nounits"
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={fields}", f"--format={fmt}"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return None
    return [line.strip() for line in out.splitlines() if line.strip()]


def memory_used_mib() -> int | None:
    """Memory in use summed over all visible GPUs, in MiB; None without nvidia-smi."""
    lines = _query("memory.used", units=False)
    return None if lines is None else sum(int(line) for line in lines if line.isdigit())
