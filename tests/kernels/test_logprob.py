"""Log-prob + entropy from hidden states: chunked PyTorch and Triton against full logits."""

import pytest
import torch

from kernels.logprob_torch import IGNORE_INDEX, linear_logprob_entropy_torch, logprob_entropy_reference


def _inputs(n, h, v, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen).to(dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=gen) / h ** 0.5).to(dtype).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=gen)
    targets[::7] = IGNORE_INDEX
    targets[1] = v - 1  # the last real column sits in a ragged tile
    return hidden, weight, targets


def _assert_matches(got, want, inputs, atol):
    """Values, then gradients of a random mix of log-probs and entropies (entropy's grad included)."""
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=atol, rtol=atol)
    gen = torch.Generator().manual_seed(3)
    mix = [torch.randn(got[0].shape, generator=gen) for _ in range(2)]
    grads_got = torch.autograd.grad(got[0] @ mix[0] + got[1] @ mix[1], inputs)
    grads_want = torch.autograd.grad(want[0] @ mix[0] + want[1] @ mix[1], inputs)
    for g, w in zip(grads_got, grads_want):
        torch.testing.assert_close(g.float(), w.float(), atol=atol, rtol=atol)


def test_reference_entropy_of_uniform_logits_is_log_vocab():
    hidden = torch.zeros(3, 4)
    logprobs, entropy = logprob_entropy_reference(hidden, torch.randn(10, 4), torch.tensor([0, 9, IGNORE_INDEX]))
    # all logits 0 -> p = 1/10: log p = -log 10, entropy = log 10; the ignored row scores 0
    torch.testing.assert_close(logprobs, torch.tensor([-2.302585, -2.302585, 0.0]))
    torch.testing.assert_close(entropy, torch.tensor([2.302585, 2.302585, 0.0]))


@pytest.mark.parametrize("vocab", [1000, 4099])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_torch_matches_full_logits(vocab, temperature):
    hidden, weight, targets = _inputs(45, 32, vocab)
    want = logprob_entropy_reference(hidden, weight, targets, temperature)
    got = linear_logprob_entropy_torch(hidden, weight, targets, temperature, logits_budget=8 * vocab)  # 6 chunks
    _assert_matches(got, want, (hidden, weight), atol=1e-5)


def test_chunked_torch_with_frozen_lm_head():
    hidden, weight, targets = _inputs(20, 16, 300)
    weight = weight.detach()
    logprobs, entropy = linear_logprob_entropy_torch(hidden, weight, targets, logits_budget=5 * 300)
    (grad,) = torch.autograd.grad(logprobs.sum() + entropy.sum(), hidden)
    ref = logprob_entropy_reference(hidden, weight, targets)
    (want,) = torch.autograd.grad(ref[0].sum() + ref[1].sum(), hidden)
    torch.testing.assert_close(grad, want, atol=1e-5, rtol=1e-5)


# (tokens, hidden, vocab, split): vocab 1000 and 4099 are not multiples of the 128-column tile;
# split 256 gives several vocab splits to merge; 37 tokens leave a ragged token tile.
@pytest.mark.parametrize("n,h,vocab,split", [(37, 48, 1000, 256), (20, 32, 4099, 1024)])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_triton_logprob_matches_full_logits(n, h, vocab, split, temperature):
    from kernels.logprob_triton import linear_logprob_entropy_triton
    hidden, weight, targets = _inputs(n, h, vocab)
    want = logprob_entropy_reference(hidden, weight, targets, temperature)
    got = linear_logprob_entropy_triton(hidden, weight, targets, temperature, block_m=16, block_n=128,
                                        block_k=16, split=split, dlogits_budget=n * 384)  # 3+ dz chunks
    _assert_matches(got, want, (hidden, weight), atol=2e-5)


def test_triton_logprob_padded_columns_do_not_leak():
    """All logits near -60: a padded column counted as exp(0) would dominate the partition
    function and push log-probs towards -60 (the verl #2899 collapse)."""
    from kernels.logprob_triton import linear_logprob_entropy_triton
    hidden = torch.ones(5, 16)
    weight = torch.full((200, 16), -60.0 / 16)
    weight[7] = -59.0 / 16
    targets = torch.tensor([7, 0, 199, 3, IGNORE_INDEX])
    got = linear_logprob_entropy_triton(hidden, weight, targets, block_m=16, block_n=128, block_k=16, split=128)
    want = logprob_entropy_reference(hidden, weight, targets)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
    assert got[0][0] > -4.4  # log(e / (e + 199)) = -4.30


def test_triton_logprob_fp16_inputs():
    from kernels.logprob_triton import linear_logprob_entropy_triton
    hidden, weight, targets = _inputs(24, 32, 1000, dtype=torch.float16)
    got = linear_logprob_entropy_triton(hidden, weight, targets, block_m=16, block_n=128, block_k=16, split=512)
    ref_inputs = [x.detach().float().requires_grad_() for x in (hidden, weight)]
    want = logprob_entropy_reference(*ref_inputs, targets)
    for g, w in zip(got, want):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, w, atol=2e-3, rtol=2e-3)
    grad_got = torch.autograd.grad(got[0].sum() + got[1].sum(), (hidden, weight))
    grad_want = torch.autograd.grad(want[0].sum() + want[1].sum(), ref_inputs)
    for g, w in zip(grad_got, grad_want):
        torch.testing.assert_close(g.float(), w, atol=1e-2, rtol=1e-2)
