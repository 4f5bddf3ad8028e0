"""The end-to-end check's own logic on the CPU: random weights that vLLM can load, and the
comparison of two backends' answers."""

import json

import torch

from benchmarks.e2e_check import compare
from benchmarks.serving.weights import write_random_weights


def answer(tokens, logprobs, prompt):
    return dict(text="".join(tokens), tokens=tokens, token_logprobs=logprobs, prompt_logprobs=prompt)


def test_compare_counts_identical_answers_and_diffs_up_to_divergence():
    ref = [answer(["a", "b", "c"], [-1.0, -2.0, -3.0], [{}, {"5": -1.0, "7": -0.5}]),
           answer(["x", "y"], [-0.1, -0.2], [{}, {"1": -2.0}])]
    pod = [answer(["a", "b", "c"], [-1.0, -2.01, -3.0], [{}, {"5": -1.02, "7": -0.5}]),
           answer(["x", "z"], [-0.1, -0.25], [{}, {"1": -2.0, "9": -9.0}])]
    s = compare(pod, ref)
    assert s["requests"] == 2 and s["identical_completions"] == 1
    assert s["first_divergence"] == [3, 1]
    assert abs(s["max_token_logprob_diff"] - 0.05) < 1e-9   # at the divergence itself, not after
    assert abs(s["max_prompt_logprob_diff"] - 0.02) < 1e-9  # only token ids both report


def test_random_weights_are_normal_and_named_as_transformers_saves_them(tmp_path):
    from safetensors.torch import load_file
    config = json.loads(open("configs/models/llama-3-8b.json").read())
    config.update(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=512)
    (tmp_path / "config.json").write_text(json.dumps(config))
    write_random_weights(tmp_path, num_layers=2)
    assert json.loads((tmp_path / "config.json").read_text())["num_hidden_layers"] == 2
    weights = {}
    for f in tmp_path.glob("*.safetensors"):
        weights.update(load_file(f))
    assert "model.layers.1.self_attn.k_proj.weight" in weights and "lm_head.weight" in weights
    q = weights["model.layers.0.self_attn.q_proj.weight"]
    assert q.dtype == torch.bfloat16 and q.shape == (64, 64)
    assert 0.015 < float(q.float().std()) < 0.025  # initializer_range 0.02, not vLLM's 1e-3 dummy


def test_prompts_fit_the_servers_context(tmp_path):
    # vLLM refuses a prompt longer than max_model_len (HTTP 400). The tokenizer is trained on the
    # machine's own Python sources, so counts vary: the same prompts were 4065 tokens on the GPU
    # machine and 3965 here. Hence a 25% margin.
    from transformers import AutoTokenizer

    from benchmarks.e2e_check import MAX_MODEL_LEN, prompts
    from benchmarks.serving.model_dir import make_model_dir
    tok = AutoTokenizer.from_pretrained(make_model_dir("llama-3-8b", tmp_path))
    for n_long, n_short in ((12, 12), (6, 6)):
        longest = max(len(tok(p)["input_ids"]) for p in prompts(n_long, n_short))
        assert 1.25 * longest + 32 <= MAX_MODEL_LEN


def test_log_facts_count_fused_batches_and_name_the_model_runner():
    from benchmarks.e2e_check import log_facts
    v2 = ("(Worker_TP0 pid=1) INFO [gpu_worker.py:378] Using V2 Model Runner\n"
          "(Worker_TP0 pid=1) DEBUG [backend.py:196] POD fused batch: 1 decodes, 12 prefills\n"
          "(Worker_TP1 pid=2) DEBUG [backend.py:196] POD fused batch: 1 decodes, 12 prefills\n")
    assert log_facts(v2) == dict(fused_batches=2, model_runner="v2")
    assert log_facts("(EngineCore pid=3) INFO Loading model\n") == dict(fused_batches=0, model_runner="v1")
