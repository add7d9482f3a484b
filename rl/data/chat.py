"""Chat-templated prompts: the one place a conversation becomes the token ids a model continues.

RL prompts (`rl.data.prompts`), evaluation problems (`rl.eval.evaluate`) and SFT examples
(`rl.data.sft_dataset`) all go through `prompt_token_ids`, so the three cannot drift apart in
how the template, the generation prompt or special tokens are applied.
"""

from __future__ import annotations

from typing import Sequence


def prompt_token_ids(tokenizer, conversations: Sequence[list[dict[str, str]]]) -> list[list[int]]:
    """Ids of each conversation through the tokenizer's chat template, ending with the
    assistant turn's header (the generation prompt); no special tokens beyond the template's.

    Args:
        conversations: [P] chat messages, each `{"role": ..., "content": ...}`.
    Returns:
        [P] token id lists.
    """
    texts = [tokenizer.apply_chat_template(list(messages), add_generation_prompt=True,
                                           tokenize=False) for messages in conversations]
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
