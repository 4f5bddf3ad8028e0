"""The command lines the harness runs: `vllm serve` for one server, `vllm bench serve` for one run.

Both are plain argv lists built from specs, so tests can check them without vLLM or a GPU.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass
from pathlib import Path

from .workloads import Workload, rate_label

HOST = "127.0.0.1"  # the harness only ever serves and sends to loopback
# On the GPU machine vLLM comes from a bundle that installs no `vllm` console script.
DEFAULT_VLLM_CLI = "python3 -m vllm.entrypoints.cli.main"
BASELINE_BACKEND = "FLASH_ATTN"
BACKENDS = ("POD", "FLASH_ATTN", "FLASHINFER")
# POD is registered by the vllm_pod plugin, which reads this variable; the others are vLLM's own.
POD_ENV_VAR = "VLLM_ATTENTION_BACKEND"
PERCENTILES = (50, 90, 99)


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


@dataclass(frozen=True)
class BenchRun:
    """One `vllm bench serve` invocation against a running server."""

    server: ServerSpec
    workload: Workload
    request_rate: float

    @property
    def name(self) -> str:
        return f"{self.server.name}__{self.workload.name}__rate{rate_label(self.request_rate)}"


def _range_ratio_arg(workload: Workload) -> str:
    if workload.input_range_ratio == workload.output_range_ratio:
        return f"{workload.input_range_ratio:g}"
    return f'{{"input": {workload.input_range_ratio:g}, "output": {workload.output_range_ratio:g}}}'


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


def bench_command(
    vllm_cli: str, run: BenchRun, result_dir: Path, *, save_detailed: bool = False
) -> list[str]:
    spec, workload = run.server, run.workload
    argv = cli_argv(vllm_cli) + [
        "bench", "serve",
        "--backend", "openai",
        "--base-url", spec.base_url,
        "--model", str(spec.model_dir),
        "--tokenizer", str(spec.model_dir),
        "--dataset-name", "random",
        "--random-input-len", str(workload.input_len),
        "--random-output-len", str(workload.output_len),
        "--random-range-ratio", _range_ratio_arg(workload),
        "--num-prompts", str(workload.num_prompts),
        "--request-rate", "inf" if math.isinf(run.request_rate) else f"{run.request_rate:g}",
        "--num-warmups", str(workload.num_warmups),
        "--seed", "0",  # same prompts and arrival times for every backend
        "--temperature", "0",
        "--ignore-eos",  # outputs run to the requested length
        "--percentile-metrics", "ttft,tpot,itl,e2el",
        "--metric-percentiles", ",".join(str(p) for p in PERCENTILES),
        "--disable-tqdm",
        "--save-result",
        "--result-dir", str(result_dir),
        "--result-filename", f"{run.name}.json",
        # Carried into the result JSON so reports never parse file names.
        "--metadata",
        f"attention_backend={spec.backend}",
        f"model_name={spec.model}",
        f"max_num_batched_tokens={spec.chunk_size}",
        f"prefix_caching={spec.prefix_caching}",
        f"workload={workload.name}",
    ]
    if workload.max_concurrency is not None:
        argv += ["--max-concurrency", str(workload.max_concurrency)]
    if save_detailed:
        argv.append("--save-detailed")
    return argv
