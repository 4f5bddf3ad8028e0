"""Train a byte-level BPE tokenizer offline and save it in transformers format.

The serving benchmarks run models with random weights (`--load-format dummy`) and no model hub, so
they need a tokenizer made here. Only its token counts matter to the benchmark: vLLM's `random`
dataset samples token ids, decodes them to text and re-encodes that text, so the one thing required
is a byte-level tokenizer whose decode/encode round-trips.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
# The smallest vocabulary among configs/models (Llama-2-7B: 32000), so every token id the tokenizer
# can produce is valid for every model shape.
DEFAULT_VOCAB_SIZE = 32000
# Enough stdlib source for ~32k merges; training takes about a second.
DEFAULT_CORPUS_CHARS = 4_000_000


def stdlib_corpus(max_chars: int = DEFAULT_CORPUS_CHARS) -> list[str]:
    """Text that ships with Python: the standard library's top-level modules, in name order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts: list[str] = []
    total = 0
    for path in sorted(stdlib.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        texts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    return texts


def train_tokenizer(
    vocab_size: int = DEFAULT_VOCAB_SIZE, corpus_chars: int = DEFAULT_CORPUS_CHARS
):
    """A `tokenizers.Tokenizer`: byte-level BPE that prepends BOS, like Llama's tokenizers do."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS],
        # Every byte is in the vocabulary, so any text (and any decoded id sequence) encodes.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(stdlib_corpus(corpus_chars), trainer)
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return tokenizer


def save_tokenizer(tokenizer, out_dir: Path, model_max_length: int) -> dict[str, int]:
    """Write tokenizer.json and tokenizer_config.json into out_dir; return the special token ids."""
    from transformers import PreTrainedTokenizerFast

    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    wrapped.save_pretrained(str(out_dir))
    return {"bos_token_id": wrapped.bos_token_id, "eos_token_id": wrapped.eos_token_id}
