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

import pytest  # noqa: E402

from kernels.synthetic_layouts import packed_layout  # noqa: E402


@pytest.fixture
def layout():
    return packed_layout
