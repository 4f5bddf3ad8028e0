"""The end-to-end check's own logic on the CPU: the checkpoints it writes (each family's, loaded
and run by transformers), the requests it sends, and the criterion that decides PASS or FAIL."""

import json
import math
import random
from pathlib import Path

import pytest
import torch

from benchmarks.e2e_check import (
    FAMILIES,
    FLOOR,
    LONG_TOKENS,
    MAX_MODEL_LEN,
    TOLERANCE_MULTIPLE,
    VOCAB_SIZE,
    judge,
    log_facts,
    logprob_diff,
    make_requests,
    write_checkpoint,
)


@pytest.fixture(scope="module")
def family_checkpoint(tmp_path_factory):
    """A family's checkpoint directory, written once per module."""
    written = {}

    def get(family):
        if family not in written:
            written[family] = write_checkpoint(tmp_path_factory.mktemp(f"e2e-{family}"), family)
        return written[family]

    return get


@pytest.fixture(scope="module")
def checkpoint(family_checkpoint):
    return family_checkpoint("llama")


def test_checkpoint_has_llama_shapes_and_random_weights(checkpoint):
    from safetensors.torch import load_file

    config = json.loads((checkpoint / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    h, d = config["hidden_size"], config["head_dim"]
    q_heads, kv_heads, layers = (config["num_attention_heads"], config["num_key_value_heads"],
                                 config["num_hidden_layers"])
    assert d == 128 and q_heads % kv_heads == 0 and q_heads > kv_heads and layers >= 2
    weights = load_file(checkpoint / "model.safetensors")
    expected = {"model.embed_tokens.weight": (VOCAB_SIZE, h), "model.norm.weight": (h,),
                "lm_head.weight": (VOCAB_SIZE, h)}
    for i in range(layers):
        p = f"model.layers.{i}."
        expected |= {p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                     p + "self_attn.q_proj.weight": (q_heads * d, h),
                     p + "self_attn.k_proj.weight": (kv_heads * d, h),
                     p + "self_attn.v_proj.weight": (kv_heads * d, h),
                     p + "self_attn.o_proj.weight": (h, q_heads * d),
                     p + "mlp.gate_proj.weight": (config["intermediate_size"], h),
                     p + "mlp.up_proj.weight": (config["intermediate_size"], h),
                     p + "mlp.down_proj.weight": (h, config["intermediate_size"])}
    assert {k: tuple(v.shape) for k, v in weights.items()} == expected
    assert all(v.dtype == torch.bfloat16 for v in weights.values())
    for name, w in weights.items():
        if "norm" in name:
            assert torch.equal(w, torch.ones_like(w))
        else:  # not vLLM's U(-1e-3, 1e-3) dummy weights, under which every logit is ~0
            assert 0.019 < float(w.float().std()) < 0.021 and abs(float(w.float().mean())) < 1e-3
    q0, q1 = (weights[f"model.layers.{i}.self_attn.q_proj.weight"] for i in (0, 1))
    assert not torch.equal(q0, q1)


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_tokenizer_and_config_agree(family_checkpoint, family):
    from transformers import AutoConfig, AutoTokenizer

    model_dir = family_checkpoint(family)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = AutoConfig.from_pretrained(model_dir)
    assert len(tokenizer) == config.vocab_size == VOCAB_SIZE
    assert (config.bos_token_id, config.eos_token_id) == (tokenizer.bos_token_id,
                                                          tokenizer.eos_token_id) == (0, 1)
    # What vLLM reads to build the attention layers, as the family wrote it.
    written = FAMILIES[family].config
    for key in ("hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                "sliding_window", "layer_types", "attn_logit_softcapping",
                "final_logit_softcapping", "query_pre_attn_scalar", "tie_word_embeddings"):
        assert getattr(config, key, None) == written.get(key), key
    assert config.max_position_embeddings >= MAX_MODEL_LEN


def test_family_windows_mask_the_long_prompts_beside_global_layers():
    for name, family in FAMILIES.items():
        config = family.config
        if "sliding_window" not in config:
            continue
        assert config["sliding_window"] < LONG_TOKENS[0], name
        if "layer_types" in config:
            assert set(config["layer_types"]) == {"sliding_attention", "full_attention"}, name
            assert len(config["layer_types"]) == config["num_hidden_layers"], name
    # vLLM's gpt-oss windows the even layers, whatever layer_types says.
    assert FAMILIES["gpt-oss"].config["layer_types"] == [
        "full_attention" if i % 2 else "sliding_attention" for i in range(4)]


def transformers_model(model_dir, **config_changes):
    """The checkpoint in transformers (float32, eager attention: the one with every feature) and
    its loading info; skips a family this transformers lacks."""
    import transformers

    architecture = json.loads((Path(model_dir) / "config.json").read_text())["architectures"][0]
    if not hasattr(transformers, architecture):
        pytest.skip(f"transformers {transformers.__version__} has no {architecture}")
    return transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager", output_loading_info=True,
        **config_changes)


def transformers_logprobs(model, ids) -> list[float]:
    with torch.no_grad():
        logits = model(ids[None]).logits[0].float()
    assert torch.isfinite(logits).all()
    return logits.log_softmax(-1)[:-1].gather(1, ids[1:, None])[:, 0].tolist()


@pytest.mark.parametrize("family", FAMILIES)
def test_family_checkpoint_loads_in_transformers_with_every_weight(family_checkpoint, family):
    from safetensors.torch import load_file

    model_dir = family_checkpoint(family)
    model, info = transformers_model(model_dir)
    assert info == dict(missing_keys=set(), unexpected_keys=set(), mismatched_keys=set(),
                        error_msgs=[])
    assert type(model).__name__ == FAMILIES[family].config["architectures"][0]
    # Every parameter is the file's (none left at transformers' initialisation), lm_head is the
    # embedding where the family ties them.
    weights = load_file(model_dir / "model.safetensors")
    params = dict(model.named_parameters(remove_duplicate=False))
    if FAMILIES[family].config["tie_word_embeddings"]:
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
    assert params.keys() == weights.keys()
    assert all(torch.equal(params[name], w.float()) for name, w in weights.items())
    # Every norm has unit scale as the family defines it (Gemma's: 1 + w).
    norms = [m for m in model.modules() if type(m).__name__.endswith("RMSNorm")]
    assert len(norms) == sum(name.endswith("norm.weight") for name in weights)
    for norm in norms:
        x = torch.randn(3, norm.weight.shape[0])
        x = x / x.pow(2).mean(-1, keepdim=True).sqrt()
        torch.testing.assert_close(norm(x), x, rtol=1e-4, atol=1e-4)  # eps aside
    ids = torch.tensor(make_requests(bos_id=0, n_long=0, n_short=1)[0]["prompt_token_ids"])
    logprobs = transformers_logprobs(model, ids)
    assert len(logprobs) == len(ids) - 1 and all(-30 < lp < 0 for lp in logprobs)


def _features():
    for name, family in FAMILIES.items():
        config = family.config
        for feature, present in (("sliding window", "sliding_window" in config),
                                 ("soft-cap", config.get("attn_logit_softcapping")),
                                 ("sinks", config["model_type"] == "gpt_oss")):
            if present:
                yield name, feature


def _without(feature, model_dir):
    """The family's model in transformers without one attention feature."""
    if feature == "sliding window":
        # A window as long as any prompt; the layer types stay (Gemma 3's set the RoPE base too).
        changes = dict(sliding_window=MAX_MODEL_LEN)
    elif feature == "soft-cap":
        changes = dict(attn_logit_softcapping=None)
    else:
        changes = {}
    model, _ = transformers_model(model_dir, **changes)
    if feature == "sinks":
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.sinks.fill_(-math.inf)
    return model


@pytest.fixture(scope="module")
def family_logprobs(family_checkpoint):
    """A family's prompt logprobs in transformers on a prompt that passes its window by 512
    tokens, computed once per module."""
    computed = {}

    def get(family):
        if family not in computed:
            length = FAMILIES[family].config.get("sliding_window", 0) + 512
            ids = torch.tensor(
                make_requests(bos_id=0, n_long=1, n_short=0)[0]["prompt_token_ids"][:length])
            model, _ = transformers_model(family_checkpoint(family))
            computed[family] = ids, transformers_logprobs(model, ids)
        return computed[family]

    return get


@pytest.mark.parametrize("family, feature", list(_features()))
def test_family_attention_feature_binds(family_checkpoint, family_logprobs, family, feature):
    # A backend that ignored the feature would fail the check, even against the largest batch
    # variance FLASH_ATTN has shown (H200, llama): the windows mask, the soft-cap bends, the sinks
    # take weight on random weights.
    measured = json.loads((Path(__file__).parents[1] / "benchmarks/results/e2e/"
                           "summary_h200.json").read_text())["flash_attn_together_vs_alone"]
    config = FAMILIES[family].config
    ids, with_it = family_logprobs(family)
    without = transformers_logprobs(_without(feature, family_checkpoint(family)), ids)
    as_answers = lambda lp: [dict(prompt_logprobs=lp, tokens=[], logprobs=[])]
    failures = judge(logprob_diff(as_answers(without), as_answers(with_it)), measured, 1)
    assert any("prompt logprobs: POD vs FLASH_ATTN max" in f for f in failures), failures
    assert any("prompt logprobs: POD vs FLASH_ATTN mean" in f for f in failures), failures
    if feature == "sliding window":
        # transformers' window (vLLM's too): a query sees itself and window - 1 keys before it,
        # so the first query that loses a key sits at position window.
        window = config["sliding_window"]
        assert with_it[:window] == without[:window] and with_it[window] != without[window]


def test_requests_make_hybrid_steps_and_fit_the_context():
    requests = make_requests(bos_id=0, n_long=6, n_short=8)
    short, long = requests[:8], requests[8:]
    assert all(r["max_tokens"] == 64 for r in short) and all(r["max_tokens"] == 1 for r in long)
    # The short ones decode through all the long ones' chunks (512 tokens a step).
    assert sum(len(r["prompt_token_ids"]) for r in requests) / 512 < 64
    assert all(1500 < len(r["prompt_token_ids"]) <= 3001 for r in long)
    assert all(len(r["prompt_token_ids"]) + r["max_tokens"] <= MAX_MODEL_LEN for r in requests)
    ids = {t for r in requests for t in r["prompt_token_ids"][1:]}
    assert all(r["prompt_token_ids"][0] == 0 for r in requests)
    assert min(ids) >= 2 and max(ids) < VOCAB_SIZE  # ordinary tokens only, no BOS/EOS inside
    assert make_requests(0, 6, 8) == requests  # the same prompts for every backend and run


def answers(n_requests=5, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(n_requests):
        tokens = [rng.randrange(100) for _ in range(rng.randint(3, 8))]
        out.append(dict(prompt_logprobs=[-rng.uniform(0, 9) for _ in range(rng.randint(1, 50))],
                        tokens=tokens, logprobs=[-rng.uniform(0, 9) for _ in tokens]))
    return out


def perturbed(runs, prompt=0.0, decode=0.0, where=lambda i: True):
    runs = json.loads(json.dumps(runs))
    for r in runs:
        r["prompt_logprobs"] = [x + (prompt if where(i) else 0.0)
                                for i, x in enumerate(r["prompt_logprobs"])]
        r["logprobs"] = [x + decode for x in r["logprobs"]]
    return runs


def test_logprob_diff_over_prompts_and_decodes_up_to_divergence():
    ref = answers()
    d = logprob_diff(perturbed(ref, prompt=0.01, decode=0.002), ref)
    assert d["prompt"]["tokens"] == sum(len(r["prompt_logprobs"]) for r in ref)
    assert d["decode"]["tokens"] == sum(len(r["tokens"]) for r in ref)
    assert math.isclose(d["prompt"]["max"], 0.01, rel_tol=1e-6)
    assert math.isclose(d["prompt"]["mean"], 0.01, rel_tol=1e-6)
    assert math.isclose(d["decode"]["max"], 0.002, rel_tol=1e-6)
    # After the generated tokens differ, the runs condition on different text: compared up to
    # and including the first differing token only.
    other = json.loads(json.dumps(ref))
    other[0]["tokens"][1] = -1
    other[0]["logprobs"] = [ref[0]["logprobs"][0] - 1] + [x - 5 for x in ref[0]["logprobs"][1:]]
    other[0]["logprobs"][2] -= 10  # after the divergence: ignored
    d = logprob_diff(other, ref)
    assert d["decode"]["max"] == pytest.approx(5.0)
    assert d["decode"]["tokens"] == sum(len(r["tokens"]) for r in ref) - (len(ref[0]["tokens"]) - 2)


def test_criterion_passes_within_the_yardstick_and_fails_beyond_it():
    ref = answers()
    yardstick = logprob_diff(perturbed(ref, prompt=0.05, decode=0.05), ref)
    within = logprob_diff(perturbed(ref, prompt=0.05 * TOLERANCE_MULTIPLE,
                                    decode=0.05 * TOLERANCE_MULTIPLE), ref)
    assert judge(within, yardstick, fused_batches=30) == []
    # A fault that moves only a few tokens a lot (a mask off by one at the start of a prompt)
    # fails on the max, one that moves every token a little fails on the mean.
    few = logprob_diff(perturbed(ref, prompt=1.0, where=lambda i: i < 2), ref)
    assert any("prompt logprobs: POD vs FLASH_ATTN max" in f for f in judge(few, yardstick, 30))
    every = logprob_diff(perturbed(ref, prompt=0.05 * TOLERANCE_MULTIPLE + 2 * FLOOR["mean"]), ref)
    failures = judge(every, yardstick, 30)
    assert any("prompt logprobs: POD vs FLASH_ATTN mean" in f for f in failures)
    decode = logprob_diff(perturbed(ref, decode=1.0), ref)
    assert any(f.startswith("decode logprobs") for f in judge(decode, yardstick, 30))


def test_criterion_floor_when_flash_attn_does_not_vary():
    ref = answers()
    zero = logprob_diff(ref, ref)
    assert zero["prompt"] == dict(max=0.0, mean=0.0, tokens=zero["prompt"]["tokens"])
    assert judge(logprob_diff(perturbed(ref, prompt=FLOOR["mean"] / 2), ref), zero, 1) == []
    assert judge(logprob_diff(perturbed(ref, prompt=2 * FLOOR["max"]), ref), zero, 1) != []


def test_criterion_fails_on_nan_and_without_fused_batches():
    ref = answers()
    broken = json.loads(json.dumps(ref))
    broken[2]["prompt_logprobs"][0] = math.nan
    zero = logprob_diff(ref, ref)
    assert any("max" in f for f in judge(logprob_diff(broken, ref), zero, 1))
    assert judge(zero, zero, fused_batches=0) == ["POD's log shows no fused hybrid batch"]


def prompt_logprobs(checkpoint, ids, leak=0, noise=0.0, seed=0) -> list[float]:
    """The checkpoint's prompt logprobs, float32 math on bf16-rounded activations as a GPU would
    keep them. noise: relative perturbation of attention outputs before their bf16 rounding (how
    two correct kernels differ); leak: every query row also sees that many later keys (the
    planted fault)."""
    from safetensors.torch import load_file

    config = json.loads((checkpoint / "config.json").read_text())
    w = {k: v.float() for k, v in load_file(checkpoint / "model.safetensors").items()}
    d, nq, nkv = config["head_dim"], config["num_attention_heads"], config["num_key_value_heads"]
    bf16 = lambda x: x.to(torch.bfloat16).float()
    norm = lambda x, g: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + config["rms_norm_eps"]) * g
    pos = torch.arange(len(ids))
    angles = pos[:, None] * config["rope_theta"] ** (-torch.arange(0, d, 2) / d)
    cos, sin = angles.cos()[:, None], angles.sin()[:, None]
    rope = lambda x: torch.cat([x[..., :d // 2] * cos - x[..., d // 2:] * sin,
                                x[..., d // 2:] * cos + x[..., :d // 2] * sin], -1)
    gen = torch.Generator().manual_seed(seed)
    x = w["model.embed_tokens.weight"][ids]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = bf16(norm(x, w[p + "input_layernorm.weight"]))
        proj = lambda name, heads: bf16(h @ w[p + f"self_attn.{name}_proj.weight"].T).view(
            len(ids), heads, d)
        q, k, v = bf16(rope(proj("q", nq))), bf16(rope(proj("k", nkv))), proj("v", nkv)
        k, v = (t.repeat_interleave(nq // nkv, 1) for t in (k, v))
        scores = torch.einsum("qhd,khd->hqk", q, k) / d ** 0.5
        scores = scores.masked_fill(pos[None, None, :] > pos[None, :, None] + leak, float("-inf"))
        o = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)
        o = bf16(o * (1 + noise * torch.randn(o.shape, generator=gen))).flatten(1)
        x = x + bf16(o @ w[p + "self_attn.o_proj.weight"].T)
        h = bf16(norm(x, w[p + "post_attention_layernorm.weight"]))
        g = torch.nn.functional.silu(h @ w[p + "mlp.gate_proj.weight"].T) * (
            h @ w[p + "mlp.up_proj.weight"].T)
        x = x + bf16(bf16(g) @ w[p + "mlp.down_proj.weight"].T)
    logits = norm(x, w["model.norm.weight"]) @ w["lm_head.weight"].T
    return logits.log_softmax(-1)[:-1].gather(1, ids[1:, None])[:, 0].tolist()


def test_criterion_tells_rounding_from_the_planted_causal_shift(checkpoint):
    # Worst case for the floor: FLASH_ATTN's own batch variance is 0. Measured here: rounding
    # max 0.014 / mean 0.004 nats, the shift max 1.9 / mean 0.05 over a 600-token prompt.
    ids = torch.tensor(make_requests(bos_id=0, n_long=1, n_short=0)[0]["prompt_token_ids"][:600])
    as_answers = lambda lp: [dict(prompt_logprobs=lp, tokens=[], logprobs=[])]
    flash_attn = as_answers(prompt_logprobs(checkpoint, ids, noise=2 ** -9, seed=1))
    zero = logprob_diff(flash_attn, flash_attn)
    pod = as_answers(prompt_logprobs(checkpoint, ids, noise=2 ** -9, seed=2))
    assert judge(logprob_diff(pod, flash_attn), zero, fused_batches=1) == []
    planted = as_answers(prompt_logprobs(checkpoint, ids, leak=1, noise=2 ** -9, seed=2))
    failures = judge(logprob_diff(planted, flash_attn), zero, fused_batches=1)
    assert any("prompt logprobs: POD vs FLASH_ATTN max" in f for f in failures)


def test_log_facts_count_fused_batches_and_name_the_model_runner():
    line = "DEBUG [backend.py:305] POD fused batch: {} decodes, {} prefills ({} tokens, longest {})"
    v2 = "\n".join(["(Worker_TP0 pid=1) INFO [gpu_worker.py:378] Using V2 Model Runner",
                    "(Worker_TP0 pid=1) " + line.format(1, 12, 3000, 512),
                    "(Worker_TP1 pid=2) " + line.format(1, 12, 3000, 512),
                    "(Worker_TP0 pid=1) " + line.format(0, 2, 8, 4),  # not hybrid
                    "(Worker_TP0 pid=1) " + line.format(16, 0, 0, 1),  # not hybrid
                    # verify steps (up to 1 + 7 tokens) beside decodes, and beside a chunk
                    "(Worker_TP0 pid=1) " + line.format(5, 3, 10, 4),
                    "(Worker_TP0 pid=1) " + line.format(5, 3, 18, 8),
                    "(Worker_TP0 pid=1) " + line.format(5, 3, 300, 290)])
    assert log_facts(v2) == dict(fused_batches=5, fused_verify_batches=2, model_runner="v2")
    assert log_facts("(EngineCore pid=3) INFO Loading model\n") == dict(
        fused_batches=0, fused_verify_batches=0, model_runner="v1")


def test_speculation_needs_fused_verify_steps():
    same = dict(prompt=dict(max=0.0, mean=0.0), decode=dict(max=0.0, mean=0.0))
    assert judge(same, same, fused_batches=3) == []
    assert judge(same, same, fused_batches=3, fused_verify_batches=1) == []
    assert judge(same, same, fused_batches=3, fused_verify_batches=0) == [
        "POD's log shows no fused batch of verify steps beside decodes"]


@pytest.mark.parametrize("pod_offset, passed, family",
                         [(0.0, True, "llama"), (0.5, False, "gemma2")])
def test_check_writes_its_summary_and_exit_status(tmp_path, monkeypatch, pod_offset, passed,
                                                  family):
    import sys

    from benchmarks import e2e_check

    def serve(backend, args, model_dir, requests_path, alone):
        requests = json.loads(requests_path.read_text())
        assert (model_dir / "model.safetensors").exists() and alone == (backend == "FLASH_ATTN")
        assert model_dir == tmp_path / "model" / family  # families do not share a directory
        assert json.loads((model_dir / "config.json").read_text())["architectures"] == \
            FAMILIES[family].config["architectures"]
        run = lambda offset: [dict(prompt_logprobs=[-8.0 + offset] * (len(r["prompt_token_ids"]) - 1),
                                   tokens=[5] * r["max_tokens"], logprobs=[-8.0] * r["max_tokens"])
                              for r in requests]
        answers = dict(together=run(pod_offset if backend == "POD" else 0.0))
        if alone:
            answers["alone"] = run(0.001)
        return answers, dict(fused_batches=7 if backend == "POD" else 0, fused_verify_batches=0,
                             model_runner="v1")

    monkeypatch.setattr(e2e_check, "serve", serve)
    monkeypatch.setattr(e2e_check, "pod_plugin_installed", lambda: True)
    monkeypatch.setattr(e2e_check, "MODEL_DIR", tmp_path / "model")
    monkeypatch.setattr(sys, "argv", ["e2e_check", "--out", str(tmp_path / "out"), "--long", "2",
                                      "--short", "3", "--family", family])
    assert e2e_check.main() == (0 if passed else 1)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["passed"] is passed and bool(summary["failures"]) is not passed
    assert summary["pod_fused_batches"] == 7 and summary["model_runner"] == "v1"
    # No speculation here: no verify steps are asked for.
    assert summary["speculative_ngram"] == 0 and summary["pod_fused_verify_batches"] == 0
    assert summary["family"] == family
    assert summary["model"]["architectures"] == FAMILIES[family].config["architectures"]
    fa = summary["flash_attn_together_vs_alone"]["prompt"]
    assert fa["max"] == pytest.approx(0.001) and fa["tokens"] == summary["requests"][
        "prompt_tokens"] - 5
    assert summary["pod_vs_flash_attn_together"]["prompt"]["max"] == pytest.approx(pod_offset)


def test_check_refuses_to_run_without_the_installed_plugin(tmp_path, monkeypatch):
    # Without vllm-pod's entry point vLLM ignores VLLM_ATTENTION_BACKEND=POD and serves FLASH_ATTN:
    # the check must stop before it serves anything, and say how to install.
    import sys
    from importlib.metadata import EntryPoint

    from benchmarks import e2e_check

    ours = EntryPoint(name="pod", value="vllm_pod:register", group="vllm.general_plugins")
    other = EntryPoint(name="other", value="other_plugin:register", group="vllm.general_plugins")
    monkeypatch.setattr(e2e_check, "entry_points", lambda group: [other, ours])
    assert e2e_check.pod_plugin_installed()
    monkeypatch.setattr(e2e_check, "entry_points", lambda group: [other])
    assert not e2e_check.pod_plugin_installed()

    def serve(*args, **kwargs):
        raise AssertionError("served without the plugin installed")

    monkeypatch.setattr(e2e_check, "serve", serve)
    monkeypatch.setattr(sys, "argv", ["e2e_check", "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="pip install --no-build-isolation -e ."):
        e2e_check.main()
    assert not (tmp_path / "out").exists()
