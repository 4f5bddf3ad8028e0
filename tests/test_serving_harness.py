"""The serving harness's own logic, on CPU: workloads, command lines, aggregation, plots, tokenizer,
and the sweep end to end against a fake vLLM CLI (tests/fixtures/fake_vllm_cli.py) on 127.0.0.1.

The result JSONs under tests/fixtures/results/runs were written by vLLM 0.26.0's own
`vllm bench serve --save-result` client (see tests/fixtures/README.md).
"""

import json
import math
import os
import shlex
import shutil
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from benchmarks.serving import logscan
from benchmarks.serving.__main__ import main
from benchmarks.serving.commands import (
    DEFAULT_VLLM_CLI, BenchRun, ServerSpec, bench_command, serve_command, serve_env,
)
from benchmarks.serving.model_dir import available_models, load_model_config, make_model_dir
from benchmarks.serving.report import write_report
from benchmarks.serving.results import METRICS, compare, format_markdown, load_records
from benchmarks.serving.server import ServerProcess
from benchmarks.serving.soak import MemoryCheck, verdict, without_per_request
from benchmarks.serving.sweep import ServerSettings, plan
from benchmarks.serving.runner import Options
from benchmarks.serving.workloads import WORKLOADS_DIR, load_workload, workload_from_dict

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


# --- workloads and model shapes ------------------------------------------------------------------

def test_shipped_workloads_parse_and_cover_the_issue():
    workloads = {p.stem: load_workload(p) for p in WORKLOADS_DIR.glob("*.yaml")}
    assert {"long-prefill", "mixed", "saturating", "soak"} <= set(workloads)
    long = workloads["long-prefill"]
    assert (long.input_len, long.output_len) == (6000, 200)
    assert {1024, 2048} <= set(long.chunk_sizes) and len(long.request_rates) >= 2
    assert workloads["mixed"].input_range_ratio > 0
    assert math.isinf(workloads["saturating"].request_rates[0])
    assert workloads["soak"].num_prompts >= 1000 and workloads["soak"].input_range_ratio > 0
    assert not any(w.prefix_caching for w in workloads.values())
    assert load_workload("mixed") == workloads["mixed"]  # by bare name


def test_workload_parsing_rules():
    w = workload_from_dict(
        {"input_len": 100, "output_len": 10, "num_prompts": 5, "chunk_sizes": 512,
         "range_ratio": {"input": 0.5}, "request_rates": [1, math.inf, "inf"]}, "x",
    )
    assert w.name == "x" and w.chunk_sizes == (512,)
    assert (w.input_range_ratio, w.output_range_ratio) == (0.5, 0.0)
    assert w.request_rates[0] == 1.0 and all(math.isinf(r) for r in w.request_rates[1:])
    assert w.max_total_len == 150 + 10
    base = {"input_len": 1, "output_len": 1, "num_prompts": 1, "chunk_sizes": [8]}
    for bad in ({"typo": 1}, {"range_ratio": 1.0}, {"request_rates": [0]}, {"num_prompts": 0}):
        with pytest.raises(ValueError):
            workload_from_dict({**base, **bad}, "bad")
    with pytest.raises(ValueError, match="missing"):
        workload_from_dict({"input_len": 1}, "bad")


@pytest.mark.parametrize("name,heads,kv_heads", [
    ("llama-3-8b", 32, 8), ("qwen2.5-7b", 28, 4), ("llama-2-7b", 32, 32),
])
def test_model_shapes(name, heads, kv_heads):
    config = load_model_config(name)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (heads, kv_heads)
    assert config["hidden_size"] // heads == 128
    assert name in available_models()


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


def test_bench_command_is_accepted_by_vllm_bench_serve():
    w = workload_from_dict(
        {"input_len": 6000, "output_len": 200, "num_prompts": 32, "chunk_sizes": [1024],
         "range_ratio": {"input": 0.2, "output": 0.5}, "max_concurrency": 16}, "long",
    )
    run = BenchRun(spec("FLASHINFER", port=9123), w, 1.5)
    argv = bench_command(DEFAULT_VLLM_CLI, run, Path("/r/runs"), save_detailed=True)
    assert argv[3:5] == ["bench", "serve"]
    assert run.name == "llama-3-8b__chunk1024__FLASHINFER__long__rate1.5"

    pytest.importorskip("vllm")
    from vllm.benchmarks.serve import add_cli_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    args = parser.parse_args(argv[5:])
    assert args.base_url == "http://127.0.0.1:9123" and args.dataset_name == "random"
    assert (args.random_input_len, args.random_output_len, args.num_prompts) == (6000, 200, 32)
    assert json.loads(args.random_range_ratio) == {"input": 0.2, "output": 0.5}
    assert args.request_rate == 1.5 and args.max_concurrency == 16
    assert args.save_result and args.save_detailed and args.ignore_eos
    assert args.result_filename == f"{run.name}.json"
    assert args.percentile_metrics == "ttft,tpot,itl,e2el" and args.metric_percentiles == "50,90,99"
    assert "attention_backend=FLASHINFER" in args.metadata and "workload=long" in args.metadata


def test_plan_groups_runs_per_server_and_skips_what_does_not_fit(tmp_path):
    long = workload_from_dict(
        {"name": "long", "input_len": 6000, "output_len": 200, "num_prompts": 4,
         "chunk_sizes": [1024, 2048], "request_rates": [1, 2]}, "long",
    )
    short = workload_from_dict(
        {"name": "short", "input_len": 100, "output_len": 10, "num_prompts": 4, "chunk_sizes": [1024]},
        "short",
    )
    opts = Options(results_dir=tmp_path, model_root=tmp_path / "models", port=8123)
    groups, skipped = plan(
        ["llama-3-8b", "llama-2-7b"], ["POD", "FLASH_ATTN"], [long, short], None, ServerSettings(), opts
    )
    names = [s.name for s, _ in groups]
    assert names[:4] == [
        "llama-3-8b__chunk1024__POD", "llama-3-8b__chunk1024__FLASH_ATTN",
        "llama-3-8b__chunk2048__POD", "llama-3-8b__chunk2048__FLASH_ATTN",
    ]
    first_spec, first_runs = groups[0]
    assert [r.name.split("__", 3)[-1] for r in first_runs] == ["long__rate1", "long__rate2", "short__rateinf"]
    assert first_spec.max_model_len == 8192 and first_spec.port == 8123
    # Llama-2's 4096-token context cannot hold 6000-token prompts: skipped with a reason, not run.
    assert all(s.max_model_len == 4096 for s, _ in groups if s.model == "llama-2-7b")
    assert len(skipped) == 2 * 2 * 2 and all("4096" in o.reason for o in skipped)
    assert plan(["llama-3-8b"], ["POD"], [long], [2048], ServerSettings(), opts)[0][0][0].chunk_size == 2048


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path, capsys):
    results = tmp_path / "results"
    assert main(["run", "--dry-run", "--results-dir", str(results), "--models", "llama-2-7b",
                 "--workloads", "long-prefill", "saturating", "--chunk-sizes", "2048"]) == 0
    out = capsys.readouterr().out
    assert "VLLM_ATTENTION_BACKEND=POD python3 -m vllm.entrypoints.cli.main serve" in out
    assert "--attention-backend FLASHINFER" in out and "--max-model-len 4096" in out
    assert out.count(" bench serve ") == 3  # saturating once per backend
    assert "# skipped llama-2-7b__chunk2048__POD__long-prefill__rate0.5: needs 6200 tokens" in out
    assert not results.exists()


# --- aggregation, tables, plots ------------------------------------------------------------------

def test_aggregation_and_ratios_on_recorded_results():
    raw = {p.name: json.loads(p.read_text()) for p in RUNS.glob("*.json")}
    comparisons = {(c.scenario.workload, c.scenario.request_rate): c for c in compare(load_records(RUNS))}
    assert len(comparisons) == 5  # sweep x3 rates, saturating, soak

    sweep2 = comparisons[("sweep", 2.0)]
    pod = raw["llama-3-8b__chunk1024__POD__sweep__rate2.json"]
    fa = raw["llama-3-8b__chunk1024__FLASH_ATTN__sweep__rate2.json"]
    for metric in METRICS:
        assert sweep2.ratio("POD", metric.key) == pytest.approx(pod[metric.key] / fa[metric.key])
    assert sweep2.ratio("FLASH_ATTN", "p50_ttft_ms") == 1.0

    saturating = comparisons[("saturating", math.inf)]
    assert saturating.scenario.max_concurrency == 8
    assert saturating.ratio("FLASHINFER", "p50_ttft_ms") is None  # no FLASHINFER run recorded
    assert comparisons[("soak", 10.0)].ratio("POD", "p50_ttft_ms") is None  # no baseline
    assert comparisons[("soak", 10.0)].records["POD"].failed == 3

    markdown = format_markdown(list(comparisons.values()), [
        {"run": "x__FLASHINFER", "status": "failed", "reason": "server exited: out of GPU memory"},
    ])
    expected = pod["p99_e2el_ms"] / fa["p99_e2el_ms"]
    assert f"{pod['p99_e2el_ms']:.1f} ({expected:.2f}x)" in markdown
    assert "| x__FLASHINFER | failed | server exited: out of GPU memory |" in markdown


def test_report_writes_markdown_and_plots(tmp_path):
    shutil.copytree(RUNS, tmp_path / "runs")
    console = write_report(tmp_path)
    assert "TTFT p99 (ms)" in console and "(0." in console
    pngs = sorted((tmp_path / "plots").glob("*.png"))
    assert [p.name for p in pngs] == [
        "latency-vs-load_llama-3-8b-chunk1024-sweep.png", "ratios_llama-3-8b-chunk1024.png",
    ]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000 for p in pngs)
    markdown = (tmp_path / "results.md").read_text()
    assert "](plots/latency-vs-load_llama-3-8b-chunk1024-sweep.png)" in markdown


def test_report_merges_results_of_several_invocations(tmp_path):
    """One GPU-machine call per server: each call's results in a subdirectory, one report over all."""
    name = "llama-3-8b__chunk1024__POD__sweep__rate2"
    shutil.copytree(RUNS, tmp_path / "call-1" / "runs")
    (tmp_path / "call-1" / "outcomes.json").write_text(json.dumps({name: {
        "run": name, "status": "failed", "reason": "server not ready", "result": None, "seconds": 1}}))
    rerun = json.loads((RUNS / f"{name}.json").read_text())
    rerun.update(date="29990101-000000", p50_ttft_ms=1.0)
    (tmp_path / "call-2" / "runs").mkdir(parents=True)
    (tmp_path / "call-2" / "runs" / f"{name}.json").write_text(json.dumps(rerun))
    (tmp_path / "call-2" / "outcomes.json").write_text(json.dumps({name: {
        "run": name, "status": "ok", "reason": "", "result": "runs/x.json", "seconds": 1}}))
    for call in ("call-1", "call-2"):
        (tmp_path / call / "invocations.jsonl").write_text(json.dumps({
            "date": call, "command": f"python -m benchmarks.serving run # {call}",
            "gpus": ["H100"], "versions": {"vllm": "0.26.0"}}) + "\n")

    console = write_report(tmp_path, with_plots=False)
    assert "did not succeed" not in console  # the rerun succeeded
    markdown = (tmp_path / "results.md").read_text()
    assert "| TTFT p50 (ms) | 14.9 | 1.00 (0.07x) | " in markdown  # the newer run's value
    assert "# call-1`" in markdown and "# call-2`" in markdown


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


def test_sweep_end_to_end_reports_failures_without_aborting(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_VLLM_OOM_BACKENDS", "FLASHINFER")
    workload = tmp_path / "tiny.yaml"
    workload.write_text(
        "input_len: 64\noutput_len: 8\nnum_prompts: 4\nrequest_rates: [1, 2]\nchunk_sizes: [256]\n"
    )
    results = tmp_path / "results"
    code = main([
        "run", "--vllm-cli", FAKE_CLI, "--results-dir", str(results),
        "--model-root", str(tmp_path / "models"), "--port", str(free_port()),
        "--workloads", str(workload), "--ready-timeout-s", "30", "--run-timeout-s", "30",
    ])
    assert code == 1  # one backend failed; the others still ran

    outcomes = json.loads((results / "outcomes.json").read_text())
    status = {n.split("__")[2] + "@" + n.rsplit("rate", 1)[1]: o["status"] for n, o in outcomes.items()}
    assert status == {"POD@1": "ok", "POD@2": "ok", "FLASH_ATTN@1": "ok", "FLASH_ATTN@2": "ok",
                      "FLASHINFER@1": "failed", "FLASHINFER@2": "failed"}
    oom = outcomes["llama-3-8b__chunk256__FLASHINFER__tiny__rate1"]
    assert "out of GPU memory" in oom["reason"]
    assert "backend=POD" in (results / "logs" / "llama-3-8b__chunk256__POD.server.log").read_text()
    assert (results / "logs" / "llama-3-8b__chunk256__POD__tiny__rate2.bench.log").exists()

    records = load_records(results)
    assert len(records) == 4
    pod = next(c for c in compare(records) if c.scenario.request_rate == 2.0)
    assert pod.ratio("POD", "p50_ttft_ms") == pytest.approx(0.9)  # the fake's POD scale
    markdown = (results / "results.md").read_text()
    assert "out of GPU memory" in markdown and "How these results were made" in markdown
    assert "[  6/6]" in capsys.readouterr().err  # progress display reached the end


def test_soak_verdict_counts_failures_log_errors_and_memory():
    detailed = json.loads((RUNS / "llama-3-8b__chunk1024__POD__soak__rate10.json").read_text())
    samples = [(0, 1000), (5, 70000), (12, 70100), (20, 70050)]  # the first two are warm-up
    flat = MemoryCheck(warmup_s=10, tolerance_mib=256, samples=samples)
    found = verdict(detailed, 20, [], flat)
    assert found["failed"] == 3 and found["request_errors"] == {"Internal Server Error": 3}
    assert found["checks"] == {
        "all requests completed": False, "no errors in server log": True,
        "GPU memory flat after warm-up": True,
    }
    assert found["memory"]["spread_after_warmup_mib"] == 50 and not found["passed"]

    growing = MemoryCheck(10, 256, [(12, 70000), (20, 70300)])
    ok = dict(detailed, completed=20, failed=0, errors=[])
    assert verdict(ok, 20, [], growing)["checks"]["GPU memory flat after warm-up"] is False
    assert verdict(ok, 20, [], MemoryCheck(10, 256, []))["checks"]["GPU memory flat after warm-up"] is None
    assert verdict(ok, 20, [], MemoryCheck(10, 256, [(11, 1), (12, 1)]))["passed"]


def test_soak_result_is_saved_without_per_request_lists():
    detailed = json.loads((RUNS / "llama-3-8b__chunk1024__POD__soak__rate10.json").read_text())
    slim = without_per_request(detailed)
    assert "errors" in detailed and "errors" not in slim and "ttfts" not in slim
    assert slim["completed"] == detailed["completed"] and slim["p99_ttft_ms"] == detailed["p99_ttft_ms"]


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
