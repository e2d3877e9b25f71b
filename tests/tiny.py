"""Tiny random-weight models with real tokenizers, built in the test run (no downloads)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

QWEN_SPECIALS = [
    "<|endoftext|>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<|im_start|>",
    "<|im_end|>",
]

_CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "for i in range(10):\n    print(i)\n",
    "import os\nimport sys\n\nif __name__ == '__main__':\n    main()\n",
    "function f(x) { return x * 2; }\nconst y = [1, 2, 3].map(f);\n",
]


def build_tokenizer(specials: list[str] = QWEN_SPECIALS) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=specials[0], pad_token=specials[0]
    )


def tiny_qwen2_config(vocab_size: int, **overrides: Any) -> Qwen2Config:
    """The real Qwen2 architecture at a size that runs in milliseconds."""
    shape: dict[str, Any] = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
    }
    return Qwen2Config(vocab_size=vocab_size, **{**shape, **overrides})


def build_model_dir(
    path: Path, specials: list[str] = QWEN_SPECIALS, seed: int = 0, **overrides: Any
) -> Path:
    import torch

    torch.manual_seed(seed)
    tokenizer = build_tokenizer(specials)
    config = tiny_qwen2_config(
        len(tokenizer),
        **{"eos_token_id": tokenizer.eos_token_id, "tie_word_embeddings": True, **overrides},
    )
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# onnxruntime's fused attention takes head sizes in multiples of 16.
ONNX_SHAPE: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "tie_word_embeddings": False,
    "initializer_range": 0.3,
}


def lively_model(vocab_size: int, eos_token_id: int, seed: int):
    """Untied, larger random weights, so that greedy output varies from prompt to prompt.

    The shared tiny model ties its embeddings with small weights, which makes it repeat the
    last prompt token: fine for cache tests, too uniform to test decoding on alone."""
    import torch

    torch.manual_seed(seed)
    config = tiny_qwen2_config(
        vocab_size, eos_token_id=eos_token_id, tie_word_embeddings=False, initializer_range=0.3
    )
    return Qwen2ForCausalLM(config).eval()
