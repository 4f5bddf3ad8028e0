"""End-to-end check on a GPU: serve a Llama-3-8B-shaped model (dummy weights, local tokenizer) with
each backend, send the same greedy requests with hybrid steps (long prompts prefilled in chunks
while short ones decode), and compare POD's completions and logprobs with FLASH_ATTN's.

    python -m benchmarks.e2e_check --out /tmp/e2e [--enforce-eager] [--tensor-parallel-size 2]
                                   [--random-weights --layers 4] [--backends FLASH_ATTN]

With --random-weights the model gets normally initialised weights (benchmarks/serving/weights.py)
instead of vLLM's near-zero dummy ones, so that logits, and the comparison, depend on attention.

Exits non-zero when a request fails, when POD's server log shows no fused hybrid batch, or when
prompt logprobs differ beyond bf16 tolerance. Token mismatches after a near-tie are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.serving.commands import DEFAULT_VLLM_CLI, ServerSpec, serve_command, serve_env
from benchmarks.serving.model_dir import make_model_dir
from benchmarks.serving.server import ServerProcess
from benchmarks.serving.weights import write_random_weights

WORDS = ("attention prefill decode kernel tensor memory bandwidth warp block cache token chunk "
         "scheduler graph stream head query key value softmax merge split tile").split()
FUSED_LINE = re.compile(r"POD fused batch")
V2_RUNNER_LINE = "Using V2 Model Runner"  # vLLM 0.26 logs this when it picks model runner V2
# Long prompts are 1500-3000 words; with the local tokenizer that can pass 4096 tokens (4065 seen).
MAX_MODEL_LEN = 8192
PROMPT_LOGPROB_TOL = 0.1  # nats; bf16 attention differences through 32 random layers


def prompts(n_long: int, n_short: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    text = lambda n: " ".join(rng.choice(WORDS) for _ in range(n))
    # Short ones first: they are decoding by the time the long ones are prefilled in chunks.
    return [text(rng.randint(8, 40)) for _ in range(n_short)] + \
           [text(rng.randint(1500, 3000)) for _ in range(n_long)]


def complete(base_url: str, model: str, prompt: str, max_tokens: int, timeout_s: float) -> dict:
    body = dict(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0.0, logprobs=1,
                prompt_logprobs=1, seed=0)
    req = urllib.request.Request(f"{base_url}/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            choice = json.load(resp)["choices"][0]
    except urllib.error.HTTPError as e:  # the server's reason (e.g. a prompt over max_model_len)
        raise RuntimeError(f"request refused ({e.code}): {e.read().decode(errors='replace')[:500]}") from e
    # Per prompt position: {token id: logprob} (the prompt token and the top-1 token).
    prompt_lp = [{tok: v["logprob"] for tok, v in d.items()} if d else {}
                 for d in (choice.get("prompt_logprobs") or [])]
    return dict(text=choice["text"], tokens=choice["logprobs"]["tokens"],
                token_logprobs=choice["logprobs"]["token_logprobs"], prompt_logprobs=prompt_lp)


def log_facts(log_text: str) -> dict:
    """What a server log proves: fused hybrid batches (counted over all tensor-parallel ranks, each
    logs its own) and the model runner vLLM picked."""
    return dict(fused_batches=len(FUSED_LINE.findall(log_text)),
                model_runner="v2" if V2_RUNNER_LINE in log_text else "v1")


def serve_and_ask(backend: str, args, model_dir: Path, batch: list[str]) -> tuple[list[dict], dict]:
    extra = ["--seed", "0", "--tensor-parallel-size", str(args.tensor_parallel_size)]
    if args.enforce_eager:
        extra.append("--enforce-eager")
    extra += args.server_arg
    if args.random_weights:
        extra += ["--load-format", "safetensors"]  # the later flag wins over the harness's dummy
    spec = ServerSpec(backend=backend, model="llama-3-8b", model_dir=model_dir,
                      chunk_size=args.chunk_size, max_model_len=MAX_MODEL_LEN, max_num_seqs=64,
                      extra_args=tuple(extra))
    env = serve_env(dict(os.environ), backend) | {"VLLM_LOGGING_LEVEL": "DEBUG"}
    if args.model_runner != "auto":
        env["VLLM_USE_V2_MODEL_RUNNER"] = "1" if args.model_runner == "v2" else "0"
    log = Path(args.out) / f"server_{backend}.log"
    server = ServerProcess(serve_command(args.vllm_cli, spec), env, log, spec.base_url)
    start = time.monotonic()
    with server:
        server.wait_ready(timeout_s=args.ready_timeout)
        print(f"{backend}: server ready after {time.monotonic() - start:.0f} s", flush=True)
        with ThreadPoolExecutor(len(batch)) as pool:
            results = list(pool.map(lambda p: complete(spec.base_url, str(model_dir), p, args.max_tokens,
                                                       args.request_timeout), batch))
    return results, log_facts(log.read_text(errors="replace"))


def compare(pod: list[dict], ref: list[dict]) -> dict:
    same = sum(p["tokens"] == r["tokens"] for p, r in zip(pod, ref))
    lp_diff, prompt_diff, first_div = 0.0, 0.0, []
    for p, r in zip(pod, ref):
        n = next((i for i, (a, b) in enumerate(zip(p["tokens"], r["tokens"])) if a != b), len(p["tokens"]))
        first_div.append(n)
        # Logprobs are comparable up to and including the first differing position.
        for a, b in list(zip(p["token_logprobs"], r["token_logprobs"]))[:n + 1]:
            lp_diff = max(lp_diff, abs(a - b))
        for a, b in zip(p["prompt_logprobs"], r["prompt_logprobs"]):
            for tok in a.keys() & b.keys():
                prompt_diff = max(prompt_diff, abs(a[tok] - b[tok]))
    return dict(requests=len(pod), identical_completions=same, first_divergence=first_div,
                max_token_logprob_diff=lp_diff, max_prompt_logprob_diff=prompt_diff)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--vllm-cli", default=DEFAULT_VLLM_CLI)
    ap.add_argument("--enforce-eager", action="store_true")
    ap.add_argument("--tensor-parallel-size", type=int, default=1)
    ap.add_argument("--chunk-size", type=int, default=1024)
    ap.add_argument("--long", type=int, default=12)
    ap.add_argument("--short", type=int, default=12)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--ready-timeout", type=float, default=480)
    ap.add_argument("--request-timeout", type=float, default=240, help="seconds per completion request")
    ap.add_argument("--backends", default="POD,FLASH_ATTN",
                    help="comma-separated; a single backend serves and answers without a comparison "
                         "(to tell a POD problem from an environment one)")
    ap.add_argument("--random-weights", action="store_true",
                    help="normally initialised weights instead of vLLM's near-zero dummy ones")
    ap.add_argument("--layers", type=int, help="cut the model to this many layers")
    ap.add_argument("--model-runner", choices=("auto", "v1", "v2"), default="auto",
                    help="force vLLM's model runner (VLLM_USE_V2_MODEL_RUNNER); auto: vLLM's choice "
                         "(V2 for dense models on vLLM 0.26)")
    ap.add_argument("--server-arg", action="append", default=[],
                    help="one more `vllm serve` argument (repeatable; e.g. --server-arg=--disable-custom-all-reduce)")
    args = ap.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    model_dir = make_model_dir("llama-3-8b", Path(args.out) / "models")
    if args.random_weights:
        write_random_weights(model_dir, num_layers=args.layers)
    elif args.layers is not None:
        ap.error("--layers needs --random-weights")
    batch = prompts(args.long, args.short)
    backends = args.backends.split(",")
    results, facts = {}, {}
    for backend in backends:
        results[backend], facts[backend] = serve_and_ask(backend, args, model_dir, batch)
        print(f"{backend}: {len(results[backend])} answers, {facts[backend]['fused_batches']} fused hybrid "
              f"batches logged, model runner {facts[backend]['model_runner']}", flush=True)
    fused = {backend: f["fused_batches"] for backend, f in facts.items()}
    if sorted(backends) != ["FLASH_ATTN", "POD"]:
        ok = fused.get("POD", 1) > 0
        print(f"served {', '.join(backends)}: every request answered, no comparison;",
              "E2E PASSED" if ok else "E2E FAILED (no fused hybrid batch in POD's log)")
        return 0 if ok else 1
    summary = compare(results["POD"], results["FLASH_ATTN"]) | dict(
        pod_fused_batches=fused["POD"], model_runner=facts["POD"]["model_runner"],
        tensor_parallel_size=args.tensor_parallel_size)
    (Path(args.out) / "e2e_summary.json").write_text(json.dumps(summary, indent=2))
    (Path(args.out) / "e2e_results.json").write_text(json.dumps(results))
    print(json.dumps(summary, indent=1))
    ok = fused["POD"] > 0 and summary["max_prompt_logprob_diff"] < PROMPT_LOGPROB_TOL
    print("E2E", "PASSED" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
