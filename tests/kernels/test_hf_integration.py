"""The `memento` attention inside stock transformers models, and compute_logprobs.

Reference: the same model with eager attention and a dense *float* 4D mask built from evict_at
(eager with a bool 4D mask is silently wrong). Tiny models from configs, no downloads.
"""

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Olmo3Config,
    Olmo3ForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

import kernels
from kernels.attention_torch import dense_float_mask

VOCAB = 101
SIZES = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)
SLIDING_WINDOW = 8

MODELS = {
    "qwen3": lambda: Qwen3ForCausalLM(Qwen3Config(head_dim=8, **SIZES)),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**SIZES)),
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**SIZES)),
    "phi3": lambda: Phi3ForCausalLM(Phi3Config(**SIZES)),
    # one sliding-window layer: the window is folded into evict_at
    "olmo3": lambda: Olmo3ForCausalLM(Olmo3Config(sliding_window=SLIDING_WINDOW,
                                                  layer_types=["sliding_attention", "full_attention"], **SIZES)),
}
SEQ_LENS = [12, 19, 9]


def _model(name):
    torch.manual_seed(0)
    return MODELS[name]().float()


def _batch(layout):
    gen = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1, VOCAB, (1, sum(SEQ_LENS)), generator=gen)
    position_ids = torch.cat([torch.arange(n) for n in SEQ_LENS])[None]
    return input_ids, position_ids, layout(SEQ_LENS)[None]


def _eager_logits(model, input_ids, position_ids, evict_at):
    """Logits [1, T, V] with eager attention and dense float masks (per layer type)."""
    model.set_attn_implementation("eager")
    full = dense_float_mask(evict_at, torch.float32)
    window = torch.arange(evict_at.shape[1]) + SLIDING_WINDOW
    masks = {"full_attention": full, "sliding_attention": dense_float_mask(torch.minimum(evict_at, window), torch.float32)}
    mask = masks if hasattr(model.config, "layer_types") else full
    return model(input_ids, position_ids=position_ids, attention_mask=mask).logits


def _param_grads(model, scalar):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.autograd.grad(scalar, params, allow_unused=True)


def _assert_grads_close(got, want, atol):
    for g, w in zip(got, want):
        if w is None:
            assert g is None or not g.any()
        else:
            torch.testing.assert_close(g, w, atol=atol, rtol=atol)


@pytest.mark.parametrize("name", MODELS)
def test_memento_forward_equals_eager_with_float_mask(name, layout):
    model = _model(name)
    input_ids, position_ids, evict_at = _batch(layout)
    mix = torch.randn(1, input_ids.shape[1], VOCAB, generator=torch.Generator().manual_seed(1))
    want = _eager_logits(model, input_ids, position_ids, evict_at)
    grads_want = _param_grads(model, (want * mix).sum())
    kernels.enable_memento_attention(model)
    got = model(input_ids, position_ids=position_ids, evict_at=evict_at).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    _assert_grads_close(_param_grads(model, (got * mix).sum()), grads_want, atol=1e-4)


@pytest.mark.parametrize("name", MODELS)
def test_compute_logprobs_equals_gathered_log_softmax(name, layout):
    model = _model(name)
    input_ids, position_ids, evict_at = _batch(layout)
    targets = kernels.next_token_targets(input_ids, position_ids)
    valid = targets != kernels.IGNORE_INDEX
    logp_all = torch.log_softmax(_eager_logits(model, input_ids, position_ids, evict_at) / 0.8, -1)
    want = torch.where(valid, logp_all.gather(-1, targets.clamp(min=0)[..., None])[..., 0], 0.0)
    grads_want = _param_grads(model, want.sum())
    kernels.enable_memento_attention(model)
    got, entropy = kernels.compute_logprobs(model, input_ids, position_ids, evict_at, targets, temperature=0.8)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(entropy, torch.where(valid, -(logp_all.exp() * logp_all).sum(-1), 0.0),
                               atol=1e-5, rtol=1e-5)
    _assert_grads_close(_param_grads(model, got.sum()), grads_want, atol=1e-4)


def test_packed_row_equals_sequences_run_alone(layout):
    """evict_at alone separates packed sequences: no segment ids needed."""
    model = kernels.enable_memento_attention(_model("qwen3"))
    input_ids, position_ids, evict_at = _batch(layout)
    targets = kernels.next_token_targets(input_ids, position_ids)
    packed, _ = kernels.compute_logprobs(model, input_ids, position_ids, evict_at, targets)
    start = 0
    for n in SEQ_LENS:
        rows = slice(start, start + n)
        alone, _ = kernels.compute_logprobs(model, input_ids[:, rows], position_ids[:, rows],
                                            evict_at[:, rows] - start, targets[:, rows])
        torch.testing.assert_close(packed[:, rows], alone, atol=1e-5, rtol=1e-5)
        start += n


def test_triton_backend_through_the_model(layout, monkeypatch):
    model = kernels.enable_memento_attention(_model("qwen3"))
    input_ids, position_ids, evict_at = _batch(layout)
    targets = kernels.next_token_targets(input_ids, position_ids)
    results = {}
    for backend in ("torch", "triton"):
        monkeypatch.setenv("MEMENTO_KERNELS_BACKEND", backend)
        logprobs, entropy = kernels.compute_logprobs(model, input_ids, position_ids, evict_at, targets)
        results[backend] = (logprobs, entropy, _param_grads(model, logprobs.sum() + entropy.sum()))
    for got, want in zip(results["triton"][:2], results["torch"][:2]):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    _assert_grads_close(results["triton"][2], results["torch"][2], atol=1e-4)


def test_compute_logprobs_refuses_a_model_without_memento_attention(layout):
    model = _model("qwen3")
    input_ids, position_ids, evict_at = _batch(layout)
    with pytest.raises(ValueError, match="memento"):
        kernels.compute_logprobs(model, input_ids, position_ids, evict_at, input_ids)


def test_memento_attention_requires_evict_at():
    model = kernels.enable_memento_attention(_model("qwen3"))
    with pytest.raises(ValueError, match="evict_at"):
        model(torch.ones(1, 4, dtype=torch.long))


def test_next_token_targets_stop_at_sequence_ends():
    input_ids = torch.tensor([[5, 6, 7, 8, 9]])
    position_ids = torch.tensor([[0, 1, 2, 0, 1]])  # sequences [5, 6, 7] and [8, 9]
    expected = torch.tensor([[6, 7, kernels.IGNORE_INDEX, 9, kernels.IGNORE_INDEX]])
    assert torch.equal(kernels.next_token_targets(input_ids, position_ids), expected)
