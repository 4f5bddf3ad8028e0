"""Model directories for `vllm serve --load-format dummy`: a real config.json shape, a local tokenizer.

configs/models/<name>.json holds the published config of each model. vLLM builds the model from it
with random weights, so nothing is downloaded; the tokenizer is trained here (see tokenizer.py).
"""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

from .tokenizer import save_tokenizer, train_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[2]
MODELS_DIR = REPO_ROOT / "configs" / "models"
DEFAULT_MODEL_ROOT = Path(tempfile.gettempdir()) / "vllm-pod-models"


def available_models() -> list[str]:
    return sorted(p.stem for p in MODELS_DIR.glob("*.json"))


def load_model_config(name: str) -> dict:
    path = MODELS_DIR / f"{name}.json"
    if not path.exists():
        raise ValueError(f"unknown model {name!r}; known: {', '.join(available_models())}")
    return json.loads(path.read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=1)
def _tokenizer():
    # One tokenizer serves every model directory in a sweep; training it takes about a second.
    return train_tokenizer()


def make_model_dir(name: str, root: Path = DEFAULT_MODEL_ROOT) -> Path:
    """Write root/<name>/ with config.json and tokenizer files; rewritten on every call."""
    config = load_model_config(name)
    out = Path(root) / name
    out.mkdir(parents=True, exist_ok=True)
    special_ids = save_tokenizer(
        _tokenizer(), out, model_max_length=config["max_position_embeddings"]
    )
    # The published bos/eos ids belong to the real tokenizer; point them at ours.
    config.update(special_ids)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return out
