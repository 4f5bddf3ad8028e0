"""Random weights with the model's own initializer scale, for end-to-end numerics checks.

vLLM's dummy loader draws every weight from U(-1e-3, 1e-3): logits come out nearly flat, so two
attention kernels agree on greedy tokens even when one is subtly wrong. Weights drawn as the model
would be initialised for training (normal, std = initializer_range) give logits that do depend on
attention, still with no download. Depth can be cut (num_hidden_layers) to keep the files small.
"""

from __future__ import annotations

import json
from pathlib import Path


def write_random_weights(model_dir: Path, num_layers: int | None = None, seed: int = 0) -> Path:
    """Writes model.safetensors (bf16) into a model directory made by make_model_dir; with
    num_layers, config.json is cut to that depth first. Serve it with --load-format safetensors."""
    import torch
    import transformers

    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    if num_layers is not None:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["num_hidden_layers"] = num_layers
        config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    torch.manual_seed(seed)
    config = transformers.AutoConfig.from_pretrained(model_dir)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(model_dir, safe_serialization=True)
    return model_dir
