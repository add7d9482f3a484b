"""Kernel tests run the Triton kernels on CPU in the interpreter.

TRITON_INTERPRET must be set before triton is imported: `@triton.jit` decides at decoration time.
`import kernels` never imports triton, but transformers' modeling code does (through
torch._dynamo): if anything imported it before this file ran, the kernels would be half compiled,
half interpreted, so fail loudly instead. Set TRITON_INTERPRET=1 in the environment (or first thing
in a root conftest) to run these tests after others that import transformers.
Interpreter rules: tiny shapes, fp32/fp16 operands (bf16 into tl.dot is garbage).
"""

import os
import sys

if "TRITON_INTERPRET" not in os.environ and "triton" in sys.modules:
    raise RuntimeError("triton was imported before tests/kernels/conftest.py could set TRITON_INTERPRET=1; "
                       "export TRITON_INTERPRET=1 to run the kernel tests in this session")
os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402


def packed_layout(seq_lens: list[int], evict: bool = True, seed: int = 0,
                  block_len: tuple[int, int] = (3, 14)) -> torch.Tensor:
    """evict_at [T] for sequences packed back to back, each a prompt then memento blocks.

    Per sequence: a prompt, then repeated (block content, memento); the content of a block is
    evicted at the last token of its memento (its `<|summary_end|>`), as in the memento layout.
    Every key is capped at the end of its own sequence. Block lengths are drawn from
    [block_len[0], block_len[1]) with `seed`; long blocks make whole tiles evicted (skipped) and
    whole tiles visible (full).
    """
    rng = np.random.default_rng(seed)
    evict_at, start = [], 0
    for length in seq_lens:
        end = start + length
        ev = np.full(length, end)
        pos = int(rng.integers(1, max(2, length // 4)))  # prompt
        while evict and pos < length:
            block = int(rng.integers(*block_len))
            memento = int(rng.integers(2, 6))
            summary_end = pos + block + memento - 1
            if summary_end >= length:
                break
            ev[pos + 1:pos + block - 1] = start + summary_end  # content between the delimiters
            pos = summary_end + 1
        evict_at.append(ev)
        start = end
    return torch.from_numpy(np.concatenate(evict_at))


@pytest.fixture
def layout():
    return packed_layout
