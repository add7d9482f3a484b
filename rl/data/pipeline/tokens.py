"""Token counts for block sizes: a Hugging Face tokenizer, or about four characters a token.

Block sizes (the segmentation's minimum and balance) and memento lengths are measured in the
tokens of the model the data is for, so point `tokenizer` at that model's tokenizer. Without
one the count is len(text) / 4 rounded up, close to BPE tokenizers on English reasoning (the
paper measured with tiktoken's cl100k).
"""

from __future__ import annotations

import math


class TokenCounter:
    """Callable text -> token count."""

    def __init__(self, tokenizer: str | None = None):
        self.name = tokenizer or "chars/4"
        self._tokenizer = None
        if tokenizer:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(tokenizer)

    def __call__(self, text: str) -> int:
        if self._tokenizer is None:
            return math.ceil(len(text) / 4)
        return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])
