"""Reading vLLM server logs for errors: what the soak counts and what a failed run reports."""

from __future__ import annotations

import re
from pathlib import Path

# vLLM's own error lines ("ERROR 07-14 12:00:00 [file.py:12] ..."), Python tracebacks, CUDA failures,
# and access-log lines of requests the server answered with a 4xx/5xx status.
ERROR_RE = re.compile(
    r"\bERROR\b|Traceback \(most recent call last\)|(?i:CUDA error|out of memory|OutOfMemoryError)"
    r'|HTTP/[\d.]+" [45]\d\d\b'
)
OOM_RE = re.compile(r"out of memory|OutOfMemoryError", re.IGNORECASE)


def read_from(path: Path, offset: int = 0) -> str:
    """The log's text from a byte offset on ('' when the file does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if ERROR_RE.search(line)]


def tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.splitlines()[-lines:])


def failure_reason(text: str, what: str) -> str:
    """A one-line reason for a failed start or run, naming OOM when the log shows one."""
    if OOM_RE.search(text):
        return f"{what}: out of GPU memory"
    errors = error_lines(text)
    return f"{what}: {errors[-1].strip()[:300]}" if errors else what
