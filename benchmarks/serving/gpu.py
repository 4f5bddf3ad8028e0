"""GPU memory as nvidia-smi reports it; every function degrades to None where there is no nvidia-smi."""

from __future__ import annotations

import shutil
import subprocess
import time


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


def wait_memory_freed(
    baseline_mib: int | None, tolerance_mib: int = 1024, timeout_s: float = 60.0
) -> tuple[bool | None, int | None]:
    """Wait until GPU memory is back within tolerance of what it was before the server started.

    Returns (freed, last reading); freed is None when nothing could be measured.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        used = memory_used_mib()
        if used is None or baseline_mib is None:
            return None, used
        if used <= baseline_mib + tolerance_mib:
            return True, used
        if time.monotonic() >= deadline:
            return False, used
        time.sleep(2.0)


def gpu_names() -> list[str] | None:
    """Per visible GPU: name, memory, driver, e.g. 'NVIDIA H100 80GB HBM3, 81559 MiB, 580.65.06'."""
    return _query("name,memory.total,driver_version")
