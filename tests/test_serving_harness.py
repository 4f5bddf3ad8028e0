"""The serving benchmarks' own logic, on CPU: the configs and sweep script as vLLM's own sweep reads
them, the ratio table, the soak, the model directory and tokenizer, and the server process used by
the end-to-end check (against a fake vLLM CLI, tests/fixtures/fake_vllm_cli.py, on 127.0.0.1).

The result JSONs under tests/fixtures/results/runs were written by vLLM 0.26.0's own
`vllm bench serve --save-result` client (see tests/fixtures/README.md).
"""

import ast
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.serving import logscan
from benchmarks.serving.__main__ import main
from benchmarks.serving.commands import DEFAULT_VLLM_CLI, ServerSpec, serve_command, serve_env
from benchmarks.serving.model_dir import available_models, load_model_config, make_model_dir
from benchmarks.serving.ratios import load_medians, markdown, write_ratios
from benchmarks.serving.server import ServerProcess
from benchmarks.serving.soak import MemoryCheck, verdict

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
RUNS = FIXTURES / "results" / "runs"
FAKE_CLI = f"{shlex.quote(sys.executable)} {shlex.quote(str(FIXTURES / 'fake_vllm_cli.py'))}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spec(backend="POD", **kw) -> ServerSpec:
    fields = dict(model="llama-3-8b", model_dir=Path("/m/llama-3-8b"), chunk_size=1024, max_model_len=8192)
    return ServerSpec(backend=backend, **{**fields, **kw})


# --- model shapes, configs and the sweep script --------------------------------------------------

@pytest.mark.parametrize("name,heads,kv_heads", [
    ("llama-3-8b", 32, 8), ("qwen2.5-7b", 28, 4), ("llama-2-7b", 32, 32),
])
def test_model_shapes(name, heads, kv_heads):
    config = load_model_config(name)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (heads, kv_heads)
    assert config["hidden_size"] // heads == 128
    assert name in available_models()


def sweep_dry_run(tmp_path, workload, *extra) -> tuple[list[list[str]], list[list[str]]]:
    """The server and benchmark commands vLLM's own sweep would run for benchmarks/serving/sweep.sh."""
    env = dict(os.environ, VLLM=f"{shlex.quote(sys.executable)} -m vllm.entrypoints.cli.main",
               PYTHON=sys.executable, OUT=str(tmp_path / "results"), MODEL_ROOT=str(tmp_path / "models"))
    out = subprocess.run([str(REPO / "benchmarks/serving/sweep.sh"), "2048", workload, "--dry-run", *extra],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    pick = lambda prefix: [ast.literal_eval(ln[len(prefix):]) for ln in lines if ln.startswith(prefix)]  # noqa: E731
    return pick("Server command: "), pick("Benchmark command: ")


def test_sweep_script_runs_every_backend_and_workload_through_vllms_own_sweep(tmp_path):
    pytest.importorskip("vllm.benchmarks.sweep")
    from vllm.benchmarks.serve import add_cli_args
    from vllm.benchmarks.sweep.param_sweep import ParameterSweep
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    servers, benches = sweep_dry_run(tmp_path, "long-prefill", "--num-runs", "2")
    # One server per backend of configs/backends/all.json; POD by the name every vLLM registers.
    backends = [s[s.index("--attention-backend") + 1] for s in servers]
    assert backends == ["CUSTOM", "FLASH_ATTN", "FLASHINFER"]
    model_dir = str(tmp_path / "models" / "llama-3-8b")
    for s in servers:
        assert s[s.index("serve") + 1] == model_dir and (model_dir and Path(model_dir, "tokenizer.json").exists())
        assert s[s.index("--max-num-batched-tokens") + 1] == "2048" and "--no-enable-prefix-caching" in s
    # Five request rates x two runs per server, each a command vLLM's bench client accepts.
    assert len(benches) == 3 * 5 * 2
    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    bench = lambda argv: parser.parse_args(argv[argv.index("bench") + 2:])  # noqa: E731
    rates = sorted({bench(b).request_rate for b in benches})
    assert rates == [0.5, 1.0, 1.5, 2.0, 3.0]
    args = bench(benches[0])
    assert (args.random_input_len, args.random_output_len, args.num_prompts) == (6000, 200, 32)
    assert args.tokenizer == model_dir and args.save_result and args.ignore_eos and args.seed == 0
    assert args.result_filename == "run=0.json" and args.percentile_metrics == "ttft,tpot,itl,e2el"
    assert args.metric_percentiles == "50,90,99"
    # The other workloads through the same command.
    for name in ("mixed", "saturating", "decode-heavy", "soak"):
        for item in ParameterSweep.read_json(REPO / f"configs/workloads/{name}.json"):
            args = bench(item.apply_to_cmd(benches[0]))
            assert args.random_input_len == item["random_input_len"] and args.num_prompts == item["num_prompts"]
    assert [bench(item.apply_to_cmd(benches[0])).max_concurrency
            for item in ParameterSweep.read_json(REPO / "configs/workloads/saturating.json")] == [32, 64, 128]
    heavy = bench(ParameterSweep.read_json(REPO / "configs/workloads/decode-heavy.json")[0].apply_to_cmd(benches[0]))
    assert heavy.random_output_len > heavy.random_input_len and heavy.max_concurrency == 128
    pod_only = ParameterSweep.read_json(REPO / "configs/backends/pod.json")
    assert [dict(item) for item in pod_only] == [{"_benchmark_name": "POD", "attention_backend": "CUSTOM"}]


def test_full_graphs_backends_serve_under_cudagraph_mode_full():
    """configs/backends/full-graphs.json: POD and FLASH_ATTN servers under full CUDA graphs of mixed
    batches (`vllm serve ... -O '{"cudagraph_mode": "FULL"}'`), as vLLM parses the flag."""
    pytest.importorskip("vllm.benchmarks.sweep")
    from vllm.benchmarks.sweep.param_sweep import ParameterSweep
    from vllm.config import CompilationConfig, CUDAGraphMode

    items = ParameterSweep.read_json(REPO / "configs/backends/full-graphs.json")
    base = ["vllm", "serve", "/m", "--max-num-batched-tokens", "1024"]
    seen = []
    for item in items:
        cmd = item.apply_to_cmd(base)
        flags = dict(zip(cmd, cmd[1:]))
        seen.append(flags["--attention-backend"])
        config = CompilationConfig(**json.loads(flags["--compilation-config"]))
        assert config.cudagraph_mode == CUDAGraphMode.FULL
    assert seen == ["CUSTOM", "FLASH_ATTN"]


# --- command lines -------------------------------------------------------------------------------

def test_serve_command_and_backend_selection():
    pod = serve_command(DEFAULT_VLLM_CLI, spec("POD", chunk_size=2048))
    assert pod[:4] == ["python3", "-m", "vllm.entrypoints.cli.main", "serve"]
    assert pod[4] == "/m/llama-3-8b"
    assert "--attention-backend" not in pod  # POD goes by environment variable
    flags = dict(zip(pod, pod[1:]))
    assert flags["--host"] == "127.0.0.1" and flags["--load-format"] == "dummy"
    assert flags["--max-num-batched-tokens"] == "2048" and "--no-enable-prefix-caching" in pod

    fa = serve_command("vllm", spec("FLASH_ATTN", extra_args=("--enforce-eager",)))
    assert fa[:2] == ["vllm", "serve"] and fa[-3:] == ["--attention-backend", "FLASH_ATTN", "--enforce-eager"]

    env = {"PATH": "/bin", "VLLM_ATTENTION_BACKEND": "stale"}
    assert serve_env(env, "POD") == {"PATH": "/bin", "VLLM_ATTENTION_BACKEND": "POD"}
    assert serve_env(env, "FLASHINFER") == {"PATH": "/bin"}


# --- tokenizer and model directory ---------------------------------------------------------------

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir("llama-3-8b", tmp_path_factory.mktemp("models"))


def test_model_dir_tokenizer_loads_offline_and_round_trips(model_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    config = json.loads((model_dir / "config.json").read_text())
    assert config["vocab_size"] == 128256 and config["num_key_value_heads"] == 8

    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    assert (hf.bos_token_id, hf.eos_token_id) == (config["bos_token_id"], config["eos_token_id"])
    assert hf.vocab_size <= 32000 and len((model_dir / "tokenizer.json").read_bytes()) > 0
    text = "def main():\n    return {'ünïcode': 1} # tabs\tand  spaces"
    ids = hf.encode(text)
    assert ids[0] == hf.bos_token_id
    assert hf.decode(ids, skip_special_tokens=True) == text

    pytest.importorskip("vllm")
    from vllm.benchmarks.datasets.datasets import RandomDataset
    from vllm.tokenizers import get_tokenizer

    tok = get_tokenizer(str(model_dir))
    assert tok.decode(tok.encode(text), skip_special_tokens=True) == text
    # vLLM's random dataset decodes random ids to text and re-encodes it to the asked length.
    requests = RandomDataset(random_seed=0).sample(
        tokenizer=tok, num_requests=8, input_len=512, output_len=16, range_ratio=0.5
    )
    assert len(requests) == 8
    for req in requests:
        assert 256 <= req.prompt_len <= 769
        assert abs(len(tok.encode(req.prompt)) - req.prompt_len) <= 1


# --- servers, the sweep end to end, the soak -----------------------------------------------------

def test_server_readiness_wait_and_group_stop(tmp_path, model_dir):
    port = free_port()
    server = ServerProcess(
        serve_command(FAKE_CLI, spec("FLASH_ATTN", model_dir=model_dir, port=port)),
        serve_env(dict(os.environ), "FLASH_ATTN"), tmp_path / "server.log", f"http://127.0.0.1:{port}",
    )
    with server:
        waited = server.wait_ready(timeout_s=30, poll_s=0.1)
        assert 0.3 < waited < 30 and server.alive()
        pgid = server.proc.pid
    with pytest.raises(ProcessLookupError):  # leader and its child are both gone
        os.killpg(pgid, 0)
    assert "backend=FLASH_ATTN" in server.log_text()


def test_log_scan_finds_errors_but_not_ordinary_lines():
    log = "\n".join([
        "INFO 11-27 07:52:18 [api_server.py:1] Starting vLLM API server; error handling on",
        'INFO:     127.0.0.1:5000 - "POST /v1/completions HTTP/1.1" 200 OK',
        'INFO:     127.0.0.1:5001 - "POST /v1/completions HTTP/1.1" 500 Internal Server Error',
        "(EngineCore_DP0 pid=7) ERROR 11-27 07:53:00 [core.py:9] EngineCore failed",
        "Traceback (most recent call last):",
    ])
    assert len(logscan.error_lines(log)) == 3
    assert logscan.failure_reason(log, "run").startswith("run: Traceback")
    assert logscan.failure_reason("torch.OutOfMemoryError: CUDA out of memory", "start") == \
        "start: out of GPU memory"


def test_signal_handling_leaves_no_group_behind(tmp_path):
    """A server that ignores SIGTERM is killed after the grace period, children included."""
    script = (
        "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "print('handler', 'set', flush=True); time.sleep(60)"
    )
    server = ServerProcess([sys.executable, "-c", script], dict(os.environ), tmp_path / "log",
                           f"http://127.0.0.1:{free_port()}")
    server.start()
    pgid = server.proc.pid
    for _ in range(100):  # until the handler is in place
        if "handler set" in server.log_text():  # (the argv line in the log has a quote between)
            break
        time.sleep(0.05)
    server.stop(grace_s=1.0)
    assert server.proc.returncode == -signal.SIGKILL
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)


# --- what vLLM's sweep does not do: ratios and the soak -------------------------------------------

def write_sweep_results(root: Path, runs_per_backend: dict[str, list[float]]) -> None:
    """Recorded `vllm bench serve` results laid out as vLLM's sweep writes them: one folder per
    (backend, workload) with a summary.json listing the runs, serve and bench parameters merged in
    (the bench entry's name last, as vLLM merges them). runs_per_backend: a scale per run, of the
    TTFT and (its inverse) of the throughput."""
    for backend, scales in runs_per_backend.items():
        for rate in (2, 4):
            base = json.loads((RUNS / f"llama-3-8b__chunk1024__{backend}__sweep__rate{rate}.json").read_text())
            records = []
            for run, scale in enumerate(scales):
                record = dict(base, p50_ttft_ms=base["p50_ttft_ms"] * scale, run_number=run,
                              request_throughput=base["request_throughput"] / scale,
                              attention_backend="CUSTOM" if backend == "POD" else backend,
                              _benchmark_name=f"sweep-rate{rate}", request_rate=rate)
                records.append(record)
            folder = root / f"SERVE--{backend}-BENCH--sweep-rate{rate}"
            folder.mkdir(parents=True)
            (folder / "summary.json").write_text(json.dumps(records))


def test_ratios_take_the_median_run_of_each_backend_against_flash_attn(tmp_path):
    experiment = tmp_path / "llama-3-8b-chunk1024-sweep"
    write_sweep_results(experiment, {"FLASH_ATTN": [1.0, 1.0, 1.2], "POD": [1.0, 3.0, 1.5], "FLASHINFER": [1.0]})
    table = load_medians(experiment)
    assert set(table) == {"sweep-rate2", "sweep-rate4"} and set(table["sweep-rate2"]) == {"POD", "FLASH_ATTN", "FLASHINFER"}
    fa = json.loads((RUNS / "llama-3-8b__chunk1024__FLASH_ATTN__sweep__rate2.json").read_text())
    pod = json.loads((RUNS / "llama-3-8b__chunk1024__POD__sweep__rate2.json").read_text())
    # Medians over runs: POD's TTFT scale 1.5 (its mean would be 1.83), FLASH_ATTN's 1.0.
    assert table["sweep-rate2"]["POD"]["p50_ttft_ms"] == pytest.approx(1.5 * pod["p50_ttft_ms"])
    assert table["sweep-rate2"]["POD"]["runs"] == 3
    expected = 1.5 * pod["p50_ttft_ms"] / fa["p50_ttft_ms"]
    text = markdown(table)
    row = next(line for line in text.splitlines() if line.startswith("| sweep-rate2 | POD | 3 |"))
    assert row.split(" | ")[3] == f"{expected:.2f}x"
    assert "| sweep-rate4 | FLASHINFER | 1 |" in text and "| FLASH_ATTN |" not in text
    assert write_ratios(experiment) == text
    assert (experiment / "ratios.md").read_text() == text and (experiment / "ratios.png").stat().st_size > 0
    # The throughput's spread over runs, (max - min) / median, for the backend and the baseline.
    assert table["sweep-rate2"]["POD"]["spread"] == pytest.approx((1 / 1.0 - 1 / 3.0) / (1 / 1.5))
    assert table["sweep-rate2"]["FLASH_ATTN"]["spread"] == pytest.approx((1 - 1 / 1.2) / 1.0)
    assert row.endswith(f" | {100 * (1 - 1 / 3) * 1.5:.1f}% | {100 * (1 - 1 / 1.2):.1f}% |")
    # Several experiments under one folder: each workload is named by its experiment too.
    write_sweep_results(tmp_path / "other", {"FLASH_ATTN": [1.0], "POD": [1.0]})
    assert "llama-3-8b-chunk1024-sweep: sweep-rate2" in load_medians(tmp_path)
    # Repeats run as experiments of their own (run1, run2: alternating the backends) pool.
    for run in (1, 2):
        write_sweep_results(tmp_path / "alternated" / f"run{run}", {"FLASH_ATTN": [1.0], "POD": [1.0 + run]})
    pooled = load_medians(tmp_path / "alternated")
    assert set(pooled) == {"sweep-rate2", "sweep-rate4"} and pooled["sweep-rate2"]["POD"]["runs"] == 2


def stand_in_sweep(experiment: Path, failed: int, output: str) -> list[str]:
    """A command that, like `vllm bench sweep serve`, makes the experiment directory and writes a
    run's result there, printing `output`."""
    result = {"num_prompts": 10, "completed": 10 - failed, "failed": failed, "run_number": 0}
    script = (f"import json, pathlib; d = pathlib.Path({str(experiment)!r}) / 'SERVE--POD-BENCH--soak'; "
              f"d.mkdir(parents=True); (d / 'run=0.json').write_text(json.dumps({result!r})); "
              f"print({output!r})")
    return [sys.executable, "-c", script, "--show-stdout"]


def test_soak_runs_the_sweep_and_checks_its_runs_and_output(tmp_path, capsys):
    good, bad = tmp_path / "good", tmp_path / "bad"
    code = main(["soak", "--dir", str(good), "--warmup-s", "0", "--",
                 *stand_in_sweep(good, 0, "INFO 200 OK")])
    found = json.loads((good / "soak.json").read_text())
    assert found["checks"]["the sweep finished"] and found["checks"]["all requests completed"]
    assert found["checks"]["no errors in the output"] and found["requests"] == 10
    # Without nvidia-smi nothing is sampled: memory is "not measured" and the soak cannot pass.
    assert code == (0 if found["checks"]["GPU memory flat after warm-up"] else 1)
    assert (good / "soak.log").read_text().strip() == "INFO 200 OK" and "# Soak" in capsys.readouterr().out

    main(["soak", "--dir", str(bad), "--", *stand_in_sweep(bad, 2, "ERROR 12-01 [core.py:1] engine died")])
    found = json.loads((bad / "soak.json").read_text())
    assert not found["checks"]["all requests completed"] and not found["checks"]["no errors in the output"]
    assert found["failed"] == 2 and not found["passed"]
    with pytest.raises(SystemExit):  # the directory exists: its runs are not this soak's
        main(["soak", "--dir", str(bad), "--", *stand_in_sweep(bad, 0, "")])
    with pytest.raises(SystemExit):  # without --show-stdout the server's errors never reach the log
        main(["soak", "--dir", str(tmp_path / "x"), "--", sys.executable, "-c", "pass"])


def test_soak_verdict_judges_memory_after_warm_up_only():
    ok = [{"num_prompts": 5, "completed": 5, "failed": 0}]
    samples = [(0, 1000), (5, 70000), (12, 70100), (20, 70050)]  # the first two are warm-up
    found = verdict(0, ok, [], MemoryCheck(warmup_s=10, tolerance_mib=256, samples=samples))
    assert found["passed"] and found["memory"]["spread_after_warmup_mib"] == 50
    growing = MemoryCheck(10, 256, [(12, 70000), (20, 70300)])
    assert verdict(0, ok, [], growing)["checks"]["GPU memory flat after warm-up"] is False
    assert verdict(0, ok, [], MemoryCheck(10, 256, []))["checks"]["GPU memory flat after warm-up"] is None
    assert not verdict(1, ok, [], MemoryCheck(10, 256, [(11, 1), (12, 1)]))["passed"]
    assert not verdict(0, [], [], MemoryCheck(10, 256, [(11, 1), (12, 1)]))["passed"]  # no runs at all
