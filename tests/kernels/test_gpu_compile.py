"""The Triton kernels compile for a GPU target (sm_90 PTX and cubin) on a machine without one.

The interpreter tests check the numbers but not compiled-mode rules (types, control flow); this
compiles every kernel the way a CUDA run would, in a subprocess without TRITON_INTERPRET.
"""

import os
import subprocess
import sys

import pytest

COMPILE_ALL = r'''
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from kernels import attention_triton as A, logprob_triton as L

FP32 = {"LSE", "DELTA", "PART_M", "PART_S", "PART_W", "PART_ZT", "ENT", "G_LP", "G_H"}
INT32 = {"EV", "KMIN", "KMAX", "TGT"}
FLOATS = {"qk_scale", "sm_scale", "inv_temp"}
ATTN = dict(GROUP=2, HEAD_DIM=128, BLOCK_M=64, BLOCK_N=64, BLOCK_D=128)
LOGPROB = dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64)

ATTN_DATA = {"Q", "K", "V", "O", "DO", "DQ", "DK", "DV"}
LOGPROB_DATA = {"X", "W", "DZ"}  # here V is the vocabulary size

def arg_type(name, dtype, data):
    if name in data:
        return "*" + dtype
    return "*fp32" if name in FP32 else "*i32" if name in INT32 else "fp32" if name in FLOATS else "i32"

for dtype in ("bf16", "fp16"):
    for fn, meta, data in ((A._attn_fwd, ATTN, ATTN_DATA), (A._attn_bwd_dkdv, ATTN, ATTN_DATA),
                           (A._attn_bwd_dq, ATTN, ATTN_DATA),
                           (L._logprob_fwd, dict(SPLIT=4096, **LOGPROB), LOGPROB_DATA),
                           (L._logprob_bwd_dz, LOGPROB, LOGPROB_DATA)):
        names = fn.arg_names
        signature = {n: "constexpr" if n in meta else arg_type(n, dtype, data) for n in names}
        constexprs = {(names.index(n),): v for n, v in meta.items()}
        triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                       target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "num_stages": 2})
print("compiled")
'''


@pytest.mark.slow
def test_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    result = subprocess.run([sys.executable, "-c", COMPILE_ALL], env=env, capture_output=True, text=True)
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-3000:]
