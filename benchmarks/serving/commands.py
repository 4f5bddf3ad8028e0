"""`vllm serve` of one backend as an argv list, for the checks that start their own servers
(benchmarks/e2e_check.py); the serving benchmarks start theirs through vLLM's sweep (sweep.sh)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"  # servers only ever listen on loopback
# vLLM's CLI through the interpreter: works where vLLM installed no `vllm` console script.
DEFAULT_VLLM_CLI = "python3 -m vllm.entrypoints.cli.main"
# POD is registered by the vllm_pod plugin, which reads this variable; the others are vLLM's own.
POD_ENV_VAR = "VLLM_ATTENTION_BACKEND"


@dataclass(frozen=True)
class ServerSpec:
    """Everything that needs its own server start: one backend, one model, one chunk size."""

    backend: str
    model: str
    model_dir: Path
    chunk_size: int
    max_model_len: int
    prefix_caching: bool = False
    port: int = 8000
    dtype: str = "bfloat16"
    gpu_memory_utilization: float = 0.9
    max_num_seqs: int = 256
    extra_args: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        caching = "-prefixcache" if self.prefix_caching else ""
        return f"{self.model}__chunk{self.chunk_size}{caching}__{self.backend}"

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"


def cli_argv(vllm_cli: str) -> list[str]:
    return shlex.split(vllm_cli)


def serve_command(vllm_cli: str, spec: ServerSpec) -> list[str]:
    argv = cli_argv(vllm_cli) + [
        "serve", str(spec.model_dir),
        "--host", HOST,
        "--port", str(spec.port),
        "--load-format", "dummy",
        "--dtype", spec.dtype,
        "--max-model-len", str(spec.max_model_len),
        "--max-num-batched-tokens", str(spec.chunk_size),
        "--max-num-seqs", str(spec.max_num_seqs),
        "--gpu-memory-utilization", str(spec.gpu_memory_utilization),
        "--enable-prefix-caching" if spec.prefix_caching else "--no-enable-prefix-caching",
    ]
    if spec.backend != "POD":
        argv += ["--attention-backend", spec.backend]
    return argv + list(spec.extra_args)


def serve_env(base_env: dict[str, str], backend: str) -> dict[str, str]:
    """The server's environment: POD is chosen by env var; for the others it must not be set."""
    env = {k: v for k, v in base_env.items() if k != POD_ENV_VAR}
    if backend == "POD":
        env[POD_ENV_VAR] = "POD"
    return env
