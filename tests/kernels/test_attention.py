"""Memento attention: the PyTorch paths against the definition, Triton against PyTorch."""

import pytest
import torch

from kernels.attention_torch import attention_chunked, attention_dense, dense_float_mask


def _qkv(rows, hq, hkv, t, d, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, h, t, d, generator=gen, dtype=torch.float32).to(dtype).requires_grad_()
            for h in (hq, hkv, hkv)]


def _grads(out, inputs, seed=1):
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    return torch.autograd.grad(out, inputs, grad_out.to(out.dtype))


def test_dense_mask_follows_the_definition(layout):
    evict_at = layout([9, 23, 14])
    mask = dense_float_mask(evict_at[None], torch.float32)[0, 0]
    for i in range(len(evict_at)):
        for j in range(len(evict_at)):
            expected = 0.0 if j <= i < evict_at[j] else float("-inf")
            assert mask[i, j] == expected, (i, j)


def test_packed_keys_never_cross_sequences(layout):
    mask = dense_float_mask(layout([10, 12])[None], torch.float32)[0, 0]
    assert torch.isinf(mask[10:, :10]).all()


def test_dense_attention_equals_float64_softmax(layout):
    q, k, v = _qkv(1, 4, 2, 40, 8)
    evict_at = layout([15, 25])[None]
    out = attention_dense(q, k, v, evict_at, scale=0.3)
    kk, vv = (x.double().repeat_interleave(2, dim=1) for x in (k, v))
    scores = q.double() @ kk.transpose(-1, -2) * 0.3 + dense_float_mask(evict_at, torch.float64)
    expected = torch.softmax(scores, -1) @ vv
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("chunk", [7, 16])
def test_chunked_attention_equals_dense(layout, chunk):
    q, k, v = _qkv(2, 4, 1, 45, 8)
    evict_at = torch.stack([layout([20, 25], seed=1), layout([45], seed=2)])
    dense = attention_dense(q, k, v, evict_at, scale=0.35)
    chunked = attention_chunked(q, k, v, evict_at, scale=0.35, chunk_size=chunk)
    torch.testing.assert_close(chunked, dense, atol=1e-5, rtol=1e-5)
    for got, want in zip(_grads(chunked, (q, k, v)), _grads(dense, (q, k, v))):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# (rows, Hq, Hkv, seq_lens per row, head_dim, block lengths or None for no evictions): sequence
# lengths are not multiples of the 16-token tiles; GQA ratios 1, 2, 4; head_dim 24 exercises the
# padded head dimension; 30-45 token blocks give skipped and full tiles inside a sequence.
TRITON_CASES = [
    (1, 2, 2, [13, 30, 27], 16, (3, 14)),
    (1, 4, 2, [70], 16, (3, 14)),
    (1, 4, 1, [21, 40], 24, (3, 14)),
    (1, 4, 2, [150], 16, (30, 45)),
    (2, 2, 1, [33], 16, None),
    (1, 4, 4, [48, 16], 16, None),
]


@pytest.mark.parametrize("rows,hq,hkv,seq_lens,d,blocks", TRITON_CASES)
def test_triton_attention_matches_reference(layout, rows, hq, hkv, seq_lens, d, blocks):
    from kernels.attention_triton import attention_triton
    t = sum(seq_lens)
    q, k, v = _qkv(rows, hq, hkv, t, d)
    evict_at = torch.stack([layout(seq_lens, blocks is not None, seed=r, block_len=blocks or (3, 14))
                            for r in range(rows)])
    want = attention_dense(q, k, v, evict_at, scale=d ** -0.5)
    got = attention_triton(q, k, v, evict_at, scale=d ** -0.5, block_m=16, block_n=16)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)
    for g, w in zip(_grads(got, (q, k, v)), _grads(want, (q, k, v))):
        torch.testing.assert_close(g, w, atol=5e-5, rtol=5e-5)


def test_triton_attention_fp16_and_rectangular_tiles(layout):
    from kernels.attention_triton import attention_triton
    q, k, v = _qkv(1, 4, 2, 50, 16, dtype=torch.float16)
    evict_at = layout([50])[None]
    got = attention_triton(q, k, v, evict_at, scale=0.25, block_m=32, block_n=16)
    want = attention_dense(*(x.float() for x in (q, k, v)), evict_at, scale=0.25)
    torch.testing.assert_close(got.float(), want, atol=2e-3, rtol=2e-3)
    grads = _grads(got, (q, k, v))
    ref = [x.detach().float().requires_grad_() for x in (q, k, v)]
    for g, w in zip(grads, _grads(attention_dense(*ref, evict_at, scale=0.25), ref)):
        torch.testing.assert_close(g.float(), w, atol=1e-2, rtol=1e-2)


def test_triton_attention_backward_is_deterministic(layout):
    from kernels.attention_triton import attention_triton
    q, k, v = _qkv(1, 4, 1, 40, 16)
    evict_at = layout([40])[None]
    first, second = (_grads(attention_triton(q, k, v, evict_at, 0.25, 16, 16), (q, k, v)) for _ in range(2))
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_torch_path_splits_packed_rows_into_independent_sequences():
    from kernels.attention_torch import attention_dense, attention_torch, independent_segments

    torch.manual_seed(0)
    lengths = [5, 9, 3, 7]
    evict_at = torch.cat([torch.full((n,), n) + sum(lengths[:i]) for i, n in enumerate(lengths)])
    evict_at[6] = 8  # an eviction inside the second sequence keeps its span whole
    assert independent_segments(evict_at) == [(0, 5), (5, 14), (14, 17), (17, 24)]
    q, k, v = (torch.randn(1, 2, 24, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    grad = torch.randn(1, 2, 24, 8, dtype=torch.float64)
    want = attention_dense(q, k, v, evict_at[None], 8 ** -0.5)
    want_grads = torch.autograd.grad(want, (q, k, v), grad)
    # 9 > 6: the second sequence takes the chunked path, the others one batched padded call
    got = attention_torch(q, k, v, evict_at[None], 8 ** -0.5, chunk_size=6)
    torch.testing.assert_close(got, want)
    for g, w in zip(torch.autograd.grad(got, (q, k, v), grad), want_grads):
        torch.testing.assert_close(g, w)
