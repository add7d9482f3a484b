"""A tiny Qwen3-architecture model and tokenizer with the memento tokens, built offline.

Tests and the default CPU run need a real Hugging Face checkpoint that transformers and vLLM both
load, without downloading anything. `build_tiny_model` writes one from a fixed seed:

- a byte-level BPE tokenizer with no merges (every byte is a token, so any text round-trips),
  plus ChatML, `<think>`/`</think>` and the four memento delimiters as special tokens, and a
  ChatML chat template;
- a randomly initialised `Qwen3ForCausalLM`. Weights use `initializer_range=0.2`: at the usual
  0.02 a tiny random model repeats one token under greedy decoding, which makes engine-vs-reference
  parity tests blind.

    python -m rollout.tiny_model /tmp/tiny   # writes the checkpoint there
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rollout.layout import MEMENTO_TOKENS

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>",
                  *MEMENTO_TOKENS)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

DEFAULT_MODEL = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,  # GQA ratio 2
    head_dim=32,
    max_position_embeddings=4096,
    rope_theta=10000.0,
    tie_word_embeddings=False,
    initializer_range=0.2,
)


def build_tokenizer():
    """Byte-level tokenizer: 256 byte tokens, then the special tokens (ids 256..264)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
        clean_up_tokenization_spaces=False,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[1:])})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(out_dir: str | Path, seed: int = 0, dtype: str = "float32",
                     **model_overrides) -> Path:
    """Write tokenizer + random Qwen3 model to `out_dir`; returns the path.

    Idempotent: if `out_dir` already holds a checkpoint built with the same arguments it is
    reused, so callers can point at a cache directory.
    """
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    out_dir = Path(out_dir)
    recipe = {"seed": seed, "dtype": dtype, **DEFAULT_MODEL, **model_overrides}
    stamp = out_dir / "tiny_model_recipe.json"
    if stamp.exists() and json.loads(stamp.read_text()) == recipe:
        return out_dir

    tokenizer = build_tokenizer()
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype=dtype,
        **{**DEFAULT_MODEL, **model_overrides},
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(config).to(getattr(torch, dtype))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    stamp.write_text(json.dumps(recipe))
    return out_dir


if __name__ == "__main__":
    print(build_tiny_model(sys.argv[1] if len(sys.argv) > 1 else "tiny_model"))
