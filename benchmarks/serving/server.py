"""One `vllm serve` process: started in its own process group, waited on, and stopped with all it spawned.

vLLM's API server forks an engine-core process (and compile workers); signalling only the parent can
leave them holding the GPU. Killing the whole group, then waiting until the group is empty, does not.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from . import logscan


class ServerError(RuntimeError):
    """The server could not be started or never became ready; the message says why."""


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex((host, port)) == 0


def models_ready(base_url: str, timeout_s: float = 5.0) -> bool:
    """True once GET /v1/models answers 200 with at least one model listed."""
    try:
        with urllib.request.urlopen(f"{base_url}/v1/models", timeout=timeout_s) as resp:
            return resp.status == 200 and bool(json.load(resp).get("data"))
    except (urllib.error.URLError, OSError, ValueError):
        return False


class ServerProcess:
    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path, base_url: str):
        self.argv = argv
        self.env = env
        self.log_path = Path(log_path)
        self.base_url = base_url
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        host, port = self.base_url.removeprefix("http://").rsplit(":", 1)
        if port_in_use(host, int(port)):
            raise ServerError(f"port {port} is already in use (a server left over from before?)")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"$ {' '.join(self.argv)}\n".encode())
            log.flush()
            # A new session makes the server the leader of its own process group.
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self, offset: int = 0) -> str:
        return logscan.read_from(self.log_path, offset)

    def log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def wait_ready(
        self, timeout_s: float, poll_s: float = 2.0,
        on_wait: Callable[[float], None] | None = None,
    ) -> float:
        """Block until /v1/models answers; return the seconds waited. Raises ServerError."""
        start = time.monotonic()
        while True:
            waited = time.monotonic() - start
            if not self.alive():
                code = self.proc.returncode if self.proc else None
                raise ServerError(
                    logscan.failure_reason(self.log_text(), f"server exited with code {code}")
                )
            if models_ready(self.base_url):
                return waited
            if waited >= timeout_s:
                raise ServerError(
                    logscan.failure_reason(self.log_text(), f"server not ready after {timeout_s:.0f} s")
                )
            if on_wait:
                on_wait(waited)
            time.sleep(poll_s)

    def stop(self, grace_s: float = 60.0) -> None:
        """SIGTERM the process group, wait for it to empty, SIGKILL whatever is left."""
        if self.proc is None:
            return
        pgid = self.proc.pid  # the leader's pid is the group id (start_new_session)
        if self._signal_group(pgid, signal.SIGTERM):
            deadline = time.monotonic() + grace_s
            while self._group_alive(pgid) and time.monotonic() < deadline:
                self._reap()
                time.sleep(0.5)
            if self._group_alive(pgid):
                self._signal_group(pgid, signal.SIGKILL)
                while self._group_alive(pgid) and time.monotonic() < deadline + 30:
                    self._reap()
                    time.sleep(0.5)
        self._reap()
        self.proc.wait(timeout=30)

    def _reap(self) -> None:
        # The leader stays a zombie (and its group "alive") until we collect it.
        if self.proc is not None:
            self.proc.poll()

    @staticmethod
    def _signal_group(pgid: int, sig: int) -> bool:
        try:
            os.killpg(pgid, sig)
            return True
        except ProcessLookupError:
            return False

    @staticmethod
    def _group_alive(pgid: int) -> bool:
        try:
            os.killpg(pgid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True

    def __enter__(self) -> "ServerProcess":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
