"""End-to-end check on a GPU that fails when POD's attention is wrong.

A small checkpoint of one model family (--family, FAMILIES; Llama by default) with random weights
(std 0.02, written here with the project's tokenizer) runs in vLLM (its offline API, eager unless
--cudagraph-mode says otherwise, one process per backend) with FLASH_ATTN and with POD
(VLLM_ATTENTION_BACKEND=POD). Each computes teacher-forced prompt log-probabilities (vLLM's
`prompt_logprobs`) of the same token-id prompts:

- together: long prompts prefilled in chunks (--max-num-batched-tokens 512) while short ones
  decode, so most steps are hybrid batches, which POD runs through its fused kernel;
- alone (FLASH_ATTN only): one prompt at a time, so no step is hybrid.

FLASH_ATTN's own together-vs-alone difference (max and mean absolute logprob difference over all
prompt tokens, and over the short requests' generated tokens up to where the two runs' tokens
first differ) is the yardstick: it is what batch composition alone changes. POD together against
FLASH_ATTN together must stay within TOLERANCE_MULTIPLE times it plus a small floor, and POD's log
must show fused hybrid batches. Prints PASS or FAIL with the numbers and writes summary.json.
vllm-pod must be installed (`pip install --no-build-isolation -e .`): vLLM finds the backend only
through its entry point, so the check refuses to start without it.

    python -m benchmarks.e2e_check --out /tmp/e2e [--family gemma2] [--model-runner v1]
                                   [--tensor-parallel-size 2] [--cudagraph-mode FULL]
                                   [--speculative-ngram 3]

--family picks the model family, and with it what the attention backend must do beside causal
masking: sliding windows (shorter than the long prompts, on every layer or interleaved with global
layers), logits soft-cap, attention sinks, head dims 64 to 256; --family's help says which family
asks for what.

--cudagraph-mode runs both backends under CUDA graphs of that vLLM mode instead of eagerly (FULL:
full graphs of mixed batches too, where every POD batch runs the fused kernel).

--speculative-ngram K runs both backends with vLLM's n-gram speculation of K tokens: the short
requests' decode steps become verify steps of up to 1 + K tokens, beside the long prompts' chunks.

A build with POD_NVCC_FLAGS=-DPOD_PLANT_CAUSAL_SHIFT=1 lets each query row see the next key too
(csrc/pod/attention_tile.cuh); the check must FAIL on it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

import vllm_pod

from benchmarks.serving.tokenizer import save_tokenizer, train_tokenizer

VOCAB_SIZE = 4096
NUM_SPECIAL_TOKENS = 2  # BOS and EOS, the tokenizer's first ids
WEIGHT_STD = 0.02


@dataclass(frozen=True)
class Family:
    """A model family's checkpoint: its config.json (the tokenizer's special token ids are added)
    and what it makes the attention backend do."""

    config: dict
    exercises: str
    qk_weight_std: float = WEIGHT_STD  # of q_proj and k_proj; the other matrices have WEIGHT_STD


# Small shapes of each family (few layers, hidden 1024), the family's own attention features.
# Every window is shorter than the long prompts (LONG_TOKENS), and interleaving families keep
# global layers, so the window masks and full attention runs beside it.
_SHAPE = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=4,
              vocab_size=VOCAB_SIZE, max_position_embeddings=8192, initializer_range=0.02,
              torch_dtype="bfloat16")
FAMILIES = {
    # Head dim 128, GQA 8 query / 2 KV heads.
    "llama": Family(dict(
        _SHAPE, architectures=["LlamaForCausalLM"], model_type="llama", num_attention_heads=8,
        num_key_value_heads=2, head_dim=128, rope_theta=500000.0, rms_norm_eps=1e-5,
        hidden_act="silu", attention_bias=False, mlp_bias=False, tie_word_embeddings=False),
        "plain causal attention"),
    # Without layer_types every layer is windowed (vLLM sets the window model-wide).
    "mistral": Family(dict(
        _SHAPE, architectures=["MistralForCausalLM"], model_type="mistral",
        num_attention_heads=8, num_key_value_heads=2, head_dim=128, sliding_window=512,
        rope_theta=1000000.0, rms_norm_eps=1e-5, hidden_act="silu", tie_word_embeddings=False),
        "sliding window (512) on every layer"),
    # Gemma-2-27B's scale: query_pre_attn_scalar is hidden / heads, not the head dim (128 at head
    # dim 256). The attention soft-cap is 5, not the real 50, which random weights never reach
    # (std-0.02 projections give scores of std ~0.6, where tanh(s / 50) is linear) and which, once
    # q/k are scaled up to reach it, makes attention nearly one-hot: there a tanh rounded to 2^-11
    # (a GPU's fast tanh) alone moves logprobs by ~0.15 nats, past the floor. With q/k weights of
    # std 0.05 scores have std ~3.6, each row's top scores (~11) bend to ~5, that rounding moves
    # logprobs by ~0.003, and dropping the cap, applying it before the scale or before the mask
    # moves them by 1-3 nats (CPU replays; tests/test_e2e_check.py keeps the first). The final
    # soft-cap (30) is vLLM's logits processor's, the same for both backends.
    "gemma2": Family(dict(
        _SHAPE, architectures=["Gemma2ForCausalLM"], model_type="gemma2", num_attention_heads=8,
        num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=128,
        attn_logit_softcapping=5.0, final_logit_softcapping=30.0, sliding_window=1024,
        layer_types=["sliding_attention", "full_attention"] * 2,
        rope_parameters=dict(rope_type="default", rope_theta=10000.0), rms_norm_eps=1e-6,
        hidden_activation="gelu_pytorch_tanh", attention_bias=False, tie_word_embeddings=True),
        "logits soft-cap (5) on every layer, sliding window (1024) on alternate layers, "
        "head dim 256, scale 1/sqrt(128)", qk_weight_std=0.05),
    # Gemma 3's pattern: five local layers to one global, each kind with its own RoPE base;
    # q/k norms. Head dim 128 as in Gemma-3-27B (the smaller ones use 256, gemma2 covers it).
    "gemma3": Family(dict(
        _SHAPE, architectures=["Gemma3ForCausalLM"], model_type="gemma3_text",
        num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=4, head_dim=128,
        query_pre_attn_scalar=128, sliding_window=512,
        layer_types=["sliding_attention"] * 5 + ["full_attention"],
        rope_parameters=dict(sliding_attention=dict(rope_type="default", rope_theta=10000.0),
                             full_attention=dict(rope_type="default", rope_theta=1000000.0)),
        rms_norm_eps=1e-6, hidden_activation="gelu_pytorch_tanh", attention_bias=False,
        tie_word_embeddings=True),
        "sliding window (512) on five layers of six, q/k norms"),
    # gpt-oss's own head dim (64), GQA (8), window (128) and YaRN RoPE; vLLM windows the even
    # layers whatever layer_types says, which says the same. Unquantized bf16 experts: vLLM loads
    # them without a quantization_config and runs them on its Triton MoE kernel.
    "gpt-oss": Family(dict(
        _SHAPE, architectures=["GptOssForCausalLM"], model_type="gpt_oss",
        intermediate_size=1024, num_local_experts=4, num_experts_per_tok=2,
        num_attention_heads=16, num_key_value_heads=2, head_dim=64, sliding_window=128,
        layer_types=["sliding_attention", "full_attention"] * 2,
        max_position_embeddings=131072,
        rope_parameters=dict(rope_type="yarn", rope_theta=150000.0, factor=32.0, beta_fast=32.0,
                             beta_slow=1.0, truncate=False, original_max_position_embeddings=4096),
        rms_norm_eps=1e-5, attention_bias=True, tie_word_embeddings=False),
        "attention sinks on every layer, sliding window (128) on alternate layers, head dim 64, "
        "mixture of experts"),
    # Phi-3-mini's head dim (96: hidden over heads, as vLLM and transformers derive it), no GQA,
    # and its fused qkv_proj and gate_up_proj weights.
    "phi3": Family(dict(
        _SHAPE, hidden_size=768, architectures=["Phi3ForCausalLM"], model_type="phi3",
        num_attention_heads=8, num_key_value_heads=8, head_dim=96,
        rope_parameters=dict(rope_type="default", rope_theta=10000.0), rms_norm_eps=1e-5,
        hidden_act="silu", tie_word_embeddings=False, pad_token_id=None),  # default 32000
        "head dim 96 (run on the head-dim-128 build), GQA 1"),
}
# Outside --out, one directory per family: the weights (100-150 MB) are rewritten on every run and
# are no result.
MODEL_DIR = Path(tempfile.gettempdir()) / "vllm-pod-e2e-model"

MAX_MODEL_LEN = 4096
CHUNK_TOKENS = 512  # --max-num-batched-tokens: long prompts take several hybrid steps
LONG_TOKENS = (1500, 3000)
SHORT_TOKENS = (16, 64)
DECODE_TOKENS = 64  # the short requests decode through all the long prompts' chunks

# POD against FLASH_ATTN may differ by this multiple of FLASH_ATTN's own together-vs-alone
# difference, plus a floor (nats) for when that difference is ~0: two correct kernels still round
# differently. On this checkpoint, attention outputs perturbed at bf16 resolution move prompt
# logprobs by up to ~0.02 (mean ~0.004), the planted causal shift moves those near a prompt's
# start by ~1 (tests/test_e2e_check.py replays both on the CPU).
TOLERANCE_MULTIPLE = 3.0
FLOOR = dict(max=0.05, mean=0.01)

# Hybrid batches only: under full graphs of mixed batches POD fuses single-phase batches too.
FUSED_LINE = re.compile(r"POD fused batch: [1-9]\d* decodes, [1-9]\d* prefills")
# Hybrid batches whose longest query has 2 to 8 tokens: verify steps of n-gram speculation beside
# one-token decodes, with no prompt chunk.
FUSED_VERIFY_LINE = re.compile(FUSED_LINE.pattern + r" \(\d+ tokens, longest [2-8]\)")
V2_RUNNER_LINE = "Using V2 Model Runner"  # vLLM 0.26 logs this when it picks model runner V2


def checkpoint_tensors(family: Family, seed: int = 0) -> dict:
    """Every weight the family's vLLM loader reads, by the checkpoint names transformers uses
    (bf16): matrices, biases and experts normal(0, WEIGHT_STD) (q/k projections at the family's
    std), norms of unit scale, attention sinks between 0 and ln(window) (each head's sink weighs
    as much as 1 to `window` keys of score 0)."""
    import torch

    config = family.config
    gen = torch.Generator().manual_seed(seed)
    normal = lambda *shape, std=WEIGHT_STD: (torch.randn(shape, generator=gen) * std).to(
        torch.bfloat16)
    gemma = config["model_type"] in ("gemma2", "gemma3_text")
    fused = config["model_type"] == "phi3"  # Phi-3 checkpoints hold q/k/v and gate/up fused
    # Gemma's RMSNorm scales by (1 + w): zeros are its unit scale.
    unit = lambda n: (torch.zeros if gemma else torch.ones)(n, dtype=torch.bfloat16)
    h, d = config["hidden_size"], config["head_dim"]
    nq, nkv = config["num_attention_heads"], config["num_key_value_heads"]
    ffn, experts = config["intermediate_size"], config.get("num_local_experts")
    tensors = {"model.embed_tokens.weight": normal(VOCAB_SIZE, h), "model.norm.weight": unit(h)}
    if not config["tie_word_embeddings"]:
        tensors["lm_head.weight"] = normal(VOCAB_SIZE, h)
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        a, m = p + "self_attn.", p + "mlp."
        q, k, v = (normal(nq * d, h, std=family.qk_weight_std),
                   normal(nkv * d, h, std=family.qk_weight_std), normal(nkv * d, h))
        tensors |= {p + "input_layernorm.weight": unit(h),
                    p + "post_attention_layernorm.weight": unit(h),
                    a + "o_proj.weight": normal(h, nq * d)}
        if fused:
            tensors[a + "qkv_proj.weight"] = torch.cat([q, k, v])
        else:
            tensors |= {a + "q_proj.weight": q, a + "k_proj.weight": k, a + "v_proj.weight": v}
        if config.get("attention_bias"):
            tensors |= {a + "q_proj.bias": normal(nq * d), a + "k_proj.bias": normal(nkv * d),
                        a + "v_proj.bias": normal(nkv * d), a + "o_proj.bias": normal(h)}
        if gemma:
            tensors |= {p + "pre_feedforward_layernorm.weight": unit(h),
                        p + "post_feedforward_layernorm.weight": unit(h)}
        if config["model_type"] == "gemma3_text":
            tensors |= {a + "q_norm.weight": unit(d), a + "k_norm.weight": unit(d)}
        if config["model_type"] == "gpt_oss":
            # Gate and up columns interleaved, as transformers and vLLM's swigluoai read them.
            tensors |= {a + "sinks": (torch.rand(nq, generator=gen) * math.log(
                            config["sliding_window"])).to(torch.bfloat16),
                        m + "router.weight": normal(experts, h), m + "router.bias": normal(experts),
                        m + "experts.gate_up_proj": normal(experts, h, 2 * ffn),
                        m + "experts.gate_up_proj_bias": normal(experts, 2 * ffn),
                        m + "experts.down_proj": normal(experts, ffn, h),
                        m + "experts.down_proj_bias": normal(experts, h)}
        else:
            gate, up = normal(ffn, h), normal(ffn, h)
            tensors[m + "down_proj.weight"] = normal(h, ffn)
            if fused:  # gate first
                tensors[m + "gate_up_proj.weight"] = torch.cat([gate, up])
            else:
                tensors |= {m + "gate_proj.weight": gate, m + "up_proj.weight": up}
    return tensors


def write_checkpoint(model_dir: Path, family: str = "llama", seed: int = 0) -> Path:
    """config.json, tokenizer files and model.safetensors of one of FAMILIES."""
    from safetensors.torch import save_file

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    special_ids = save_tokenizer(train_tokenizer(vocab_size=VOCAB_SIZE), model_dir,
                                 model_max_length=MAX_MODEL_LEN)
    config = FAMILIES[family].config | special_ids
    (model_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    save_file(checkpoint_tensors(FAMILIES[family], seed), str(model_dir / "model.safetensors"),
              metadata={"format": "pt"})
    return model_dir


def make_requests(bos_id: int, n_long: int, n_short: int, seed: int = 0) -> list[dict]:
    """Token-id prompts (BOS first, then ids of the tokenizer's ordinary tokens) and how many
    tokens each generates: short ones first, so that they decode while the long ones are
    prefilled in chunks behind them; the long ones only need their prompt logprobs."""
    rng = random.Random(seed)
    ordinary = range(NUM_SPECIAL_TOKENS, VOCAB_SIZE)
    request = lambda lengths, max_tokens: dict(
        prompt_token_ids=[bos_id] + [rng.choice(ordinary) for _ in range(rng.randint(*lengths))],
        max_tokens=max_tokens)
    return [request(SHORT_TOKENS, DECODE_TOKENS) for _ in range(n_short)] + \
           [request(LONG_TOKENS, 1) for _ in range(n_long)]


# -- on the GPU: one process per backend ------------------------------------------------------

def run_backend(args) -> None:
    """Serves the checkpoint with one backend and writes its answers (--result)."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    requests = json.loads(Path(args.requests).read_text())
    graphs = args.cudagraph_mode != "NONE"
    llm = LLM(model=args.model, dtype="bfloat16", seed=0, enforce_eager=not graphs,
              compilation_config={"cudagraph_mode": args.cudagraph_mode} if graphs else None,
              max_model_len=MAX_MODEL_LEN, max_num_batched_tokens=CHUNK_TOKENS, max_num_seqs=64,
              enable_chunked_prefill=True, enable_prefix_caching=False,
              tensor_parallel_size=args.tensor_parallel_size, kv_cache_dtype=args.kv_cache_dtype,
              # A fixed cache skips vLLM's memory profiling, which misreads other processes'
              # allocations as its own: several checks can then share one GPU.
              gpu_memory_utilization=0.05 if args.kv_cache_gib else 0.5,
              kv_cache_memory_bytes=int(args.kv_cache_gib * 2**30) if args.kv_cache_gib else None,
              speculative_config=dict(method="ngram", num_speculative_tokens=args.speculative_ngram,
                                      prompt_lookup_min=2, prompt_lookup_max=4)
              if args.speculative_ngram else None,
              # POD is selected the way users select it, by VLLM_ATTENTION_BACKEND=POD.
              attention_config=None if args.backend == "POD" else {"backend": args.backend})
    prompts = [TokensPrompt(prompt_token_ids=r["prompt_token_ids"]) for r in requests]
    params = [SamplingParams(temperature=0.0, prompt_logprobs=0, logprobs=0, ignore_eos=True,
                             max_tokens=r["max_tokens"]) for r in requests]

    def answer(output) -> dict:
        generated = output.outputs[0]
        return dict(prompt_logprobs=[lp[t].logprob for t, lp in zip(
                        output.prompt_token_ids[1:], output.prompt_logprobs[1:], strict=True)],
                    tokens=list(generated.token_ids),
                    logprobs=[lp[t].logprob for t, lp in zip(generated.token_ids,
                                                             generated.logprobs, strict=True)])

    result = dict(together=[answer(o) for o in llm.generate(prompts, params, use_tqdm=False)])
    if args.alone:
        result["alone"] = [answer(llm.generate([p], [s], use_tqdm=False)[0])
                           for p, s in zip(prompts, params)]
    Path(args.result).write_text(json.dumps(result))


# -- on the host: the comparison ---------------------------------------------------------------

def logprob_diff(a: list[dict], b: list[dict]) -> dict:
    """Max and mean |a - b| over every prompt token's logprob of every request, and over the
    generated tokens' logprobs up to and including the first position where the two runs'
    tokens differ (after it they condition on different text). NaN stays NaN."""
    prompt, decode = [], []
    for x, y in zip(a, b, strict=True):
        prompt += [abs(p - q) for p, q in zip(x["prompt_logprobs"], y["prompt_logprobs"],
                                               strict=True)]
        same = next((i for i, (s, t) in enumerate(zip(x["tokens"], y["tokens"])) if s != t),
                    len(x["tokens"]) - 1)
        decode += [abs(p - q) for p, q in zip(x["logprobs"][:same + 1], y["logprobs"][:same + 1])]
    stats = lambda d: dict(max=_nan_max(d), mean=sum(d) / len(d) if d else 0.0, tokens=len(d))
    return dict(prompt=stats(prompt), decode=stats(decode))


def _nan_max(values: list[float]) -> float:
    return math.nan if any(math.isnan(v) for v in values) else max(values, default=0.0)


def judge(pod_vs_fa: dict, fa_vs_fa: dict, fused_batches: int,
          fused_verify_batches: int | None = None) -> list[str]:
    """Why the check fails (empty: it passes). fused_verify_batches: under speculation, the fused
    batches of verify steps POD's log shows (None: no speculation)."""
    failures = []
    for tokens in ("prompt", "decode"):
        for stat in ("max", "mean"):
            limit = TOLERANCE_MULTIPLE * fa_vs_fa[tokens][stat] + FLOOR[stat]
            got = pod_vs_fa[tokens][stat]
            if not got <= limit:  # NaN fails too
                failures.append(f"{tokens} logprobs: POD vs FLASH_ATTN {stat} |diff| {got:.5f} > "
                                f"{limit:.5f} ({TOLERANCE_MULTIPLE:g} x FLASH_ATTN's own "
                                f"{fa_vs_fa[tokens][stat]:.5f} + {FLOOR[stat]:g})")
    if fused_batches == 0:
        failures.append("POD's log shows no fused hybrid batch")
    if fused_verify_batches == 0:
        failures.append("POD's log shows no fused batch of verify steps beside decodes")
    return failures


def log_facts(log_text: str) -> dict:
    """What a vLLM log proves: fused hybrid batches and, among them, those of verify steps
    (counted over all tensor-parallel ranks, each logs its own), and the model runner vLLM
    picked."""
    return dict(fused_batches=len(FUSED_LINE.findall(log_text)),
                fused_verify_batches=len(FUSED_VERIFY_LINE.findall(log_text)),
                model_runner="v2" if V2_RUNNER_LINE in log_text else "v1")


def serve(backend: str, args, model_dir: Path, requests_path: Path, alone: bool) -> tuple[dict, dict]:
    out = Path(args.out)
    result, log = out / f"answers_{backend}.json", out / f"vllm_{backend}.log"
    env = dict(os.environ, VLLM_LOGGING_LEVEL="DEBUG")  # POD logs each fused batch at DEBUG
    env.pop("VLLM_ATTENTION_BACKEND", None)
    if backend == "POD":
        env["VLLM_ATTENTION_BACKEND"] = "POD"
    if args.model_runner != "auto":
        env["VLLM_USE_V2_MODEL_RUNNER"] = "1" if args.model_runner == "v2" else "0"
    cmd = [sys.executable, "-m", "benchmarks.e2e_check", "--backend", backend, "--model",
           str(model_dir), "--requests", str(requests_path), "--result", str(result),
           "--tensor-parallel-size", str(args.tensor_parallel_size), "--out", str(out),
           "--cudagraph-mode", args.cudagraph_mode, "--kv-cache-gib", str(args.kv_cache_gib),
           "--speculative-ngram", str(args.speculative_ngram), "--kv-cache-dtype", args.kv_cache_dtype]
    with log.open("w") as f:
        rc = subprocess.run(cmd + (["--alone"] if alone else []), env=env, stdout=f,
                            stderr=subprocess.STDOUT, timeout=args.timeout).returncode
    if rc != 0:
        tail = log.read_text(errors="replace").splitlines()[-30:]
        raise SystemExit(f"{backend} run failed (exit {rc}); end of {log}:\n" + "\n".join(tail))
    facts = log_facts(log.read_text(errors="replace"))
    print(f"{backend}: answered; {facts['fused_batches']} fused hybrid batches logged "
          f"({facts['fused_verify_batches']} of verify steps beside decodes), model runner "
          f"{facts['model_runner']}", flush=True)
    return json.loads(result.read_text()), facts


def pod_plugin_installed() -> bool:
    """Whether vLLM will load POD. It finds plugins only through installed entry points: with
    vllm-pod merely importable (on PYTHONPATH, or run from the repository), VLLM_ATTENTION_BACKEND=POD
    is ignored and the "POD" run is FLASH_ATTN's."""
    target = f"{vllm_pod.__name__}:{vllm_pod.register.__name__}"
    return any(ep.value == target for ep in entry_points(group="vllm.general_plugins"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--family", choices=FAMILIES, default="llama",
                    help="the checkpoint's model family: " + "; ".join(
                        f"{name}: {f.exercises}" for name, f in FAMILIES.items()))
    ap.add_argument("--tensor-parallel-size", type=int, default=1)
    ap.add_argument("--model-runner", choices=("auto", "v1", "v2"), default="auto",
                    help="force vLLM's model runner (VLLM_USE_V2_MODEL_RUNNER); auto: vLLM's "
                         "choice (V2 for dense models on vLLM 0.26)")
    ap.add_argument("--cudagraph-mode", default="NONE",
                    help="vLLM's cudagraph_mode for both backends (NONE: eager)")
    ap.add_argument("--speculative-ngram", type=int, default=0, metavar="K",
                    help="both backends speculate K tokens by n-gram lookup, so the short "
                         "requests' decode steps become verify steps of up to 1 + K tokens")
    ap.add_argument("--kv-cache-gib", type=float, default=0, metavar="GIB",
                    help="a KV cache of this size for each backend instead of half the GPU's "
                         "memory, so that several checks run side by side on one GPU")
    ap.add_argument("--kv-cache-dtype", choices=("auto", "fp8"), default="auto",
                    help="both backends keep an fp8 (e4m3) KV cache, with vLLM's unit scales "
                         "(the checkpoint carries none) and the query quantized as for FA3")
    ap.add_argument("--long", type=int, default=6, help="long prompts")
    ap.add_argument("--short", type=int, default=8, help="short prompts")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per backend's run")
    # One backend's run, in its own process (started by the check itself).
    ap.add_argument("--backend", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--requests", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--alone", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.backend:
        run_backend(args)
        return 0

    if not pod_plugin_installed():
        raise SystemExit("vllm-pod is not installed, so vLLM would not load the POD backend (its "
                         "vllm.general_plugins entry point is missing): run "
                         "`pip install --no-build-isolation -e .` first")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model_dir = write_checkpoint(MODEL_DIR / args.family, args.family)
    config = json.loads((model_dir / "config.json").read_text())
    requests = make_requests(config["bos_token_id"], args.long, args.short)
    requests_path = out / "requests.json"
    requests_path.write_text(json.dumps(requests))

    fa, _ = serve("FLASH_ATTN", args, model_dir, requests_path, alone=True)
    pod, pod_facts = serve("POD", args, model_dir, requests_path, alone=False)
    fa_vs_fa = logprob_diff(fa["together"], fa["alone"])
    pod_vs_fa = logprob_diff(pod["together"], fa["together"])
    failures = judge(pod_vs_fa, fa_vs_fa, pod_facts["fused_batches"],
                     pod_facts["fused_verify_batches"] if args.speculative_ngram else None)
    family = FAMILIES[args.family]
    summary = dict(
        passed=not failures, failures=failures, family=args.family,
        pod_vs_flash_attn_together=pod_vs_fa, flash_attn_together_vs_alone=fa_vs_fa,
        pod_together_vs_flash_attn_alone=logprob_diff(pod["together"], fa["alone"]),
        tolerance=dict(multiple=TOLERANCE_MULTIPLE, floor=FLOOR),
        pod_fused_batches=pod_facts["fused_batches"], model_runner=pod_facts["model_runner"],
        tensor_parallel_size=args.tensor_parallel_size, cudagraph_mode=args.cudagraph_mode,
        speculative_ngram=args.speculative_ngram, kv_cache_dtype=args.kv_cache_dtype,
        pod_fused_verify_batches=pod_facts["fused_verify_batches"],
        requests=dict(long=args.long, short=args.short,
                      prompt_tokens=sum(len(r["prompt_token_ids"]) for r in requests)),
        chunk_tokens=CHUNK_TOKENS, model=family.config | dict(
            weight_std=WEIGHT_STD, qk_weight_std=family.qk_weight_std))
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: summary[k] for k in ("pod_vs_flash_attn_together",
                                              "flash_attn_together_vs_alone",
                                              "pod_fused_batches", "model_runner")}, indent=1))
    print("E2E", "PASS" if not failures else "FAIL: " + "; ".join(failures))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
