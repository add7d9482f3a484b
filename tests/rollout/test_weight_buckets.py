"""Weight buckets: the bucket plan against a slow reference, and bit-exact packing."""

import random

import pytest
import torch

from rollout.weight_buckets import ParamMeta, pack_bucket, plan_buckets, unpack_bucket


def reference_plan(sizes: list[int], budget: int) -> list[list[int]]:
    """Slow and obvious: the first bucket is the longest prefix within the budget (at least one
    tensor); the rest are planned the same way."""
    if not sizes:
        return []
    take = 1
    while take < len(sizes) and sum(sizes[:take + 1]) <= budget:
        take += 1
    rest = reference_plan(sizes[take:], budget)
    return [list(range(take))] + [[i + take for i in bucket] for bucket in rest]


def metas(sizes, dtype=torch.float32):
    return [ParamMeta(f"p{i}", dtype, (n // dtype.itemsize,)) for i, n in enumerate(sizes)]


@pytest.mark.parametrize("seed", range(30))
def test_plan_matches_the_reference_on_random_sizes(seed):
    rng = random.Random(seed)
    sizes = [4 * rng.choice([0, 1, 3, 7, 64, 251, 1000]) for _ in range(rng.randint(0, 23))]
    budget = rng.choice([4, 12, 257 * 4, 4000, 10**6])
    buckets = plan_buckets(metas(sizes), budget)
    assert buckets == reference_plan(sizes, budget)
    assert [i for bucket in buckets for i in bucket] == list(range(len(sizes)))
    for bucket in buckets:  # within budget unless a single tensor alone exceeds it
        assert len(bucket) == 1 or sum(sizes[i] for i in bucket) <= budget


def test_plan_by_hand():
    # 40 + 40 fit 100; 40 more would be 120; 300 exceeds the budget and goes alone
    assert plan_buckets(metas([40, 40, 40, 300, 8]), 100) == [[0, 1], [2], [3], [4]]
    with pytest.raises(ValueError, match="bucket_bytes"):
        plan_buckets(metas([4]), 0)


def test_pack_then_unpack_keeps_names_dtypes_shapes_and_bits():
    gen = torch.Generator().manual_seed(0)
    tensors = [
        ("model.embed_tokens.weight", torch.randn(7, 5, generator=gen).to(torch.bfloat16)),
        ("model.norm.weight", torch.randn(13, generator=gen).to(torch.float16)),
        ("scale", torch.tensor(3.5)),  # 0-dim
        ("empty", torch.zeros(0, 3)),
        ("lm_head.weight", torch.randn(3, 11, generator=gen)[:, ::2]),  # not contiguous
        ("steps", torch.arange(5, dtype=torch.int64) - 2),
    ]
    info, buffer = pack_bucket(tensors)
    # offsets rounded up to 16: bf16 70 B at 0, fp16 26 B at 80, 4 B at 112, 0 B at 128,
    # 18 floats (72 B) at 128, 5 int64 (40 B) at 208: 248 B
    assert len(buffer) == 248
    for packed_as in (buffer, bytes(buffer)):  # bytes: as it arrives over vLLM's RPC
        out = unpack_bucket(info, packed_as)
        assert [n for n, _ in out] == [n for n, _ in tensors]
        for (_, want), (_, got) in zip(tensors, out):
            assert got.dtype == want.dtype and got.shape == want.shape
            assert torch.equal(got.view(-1).view(torch.uint8) if got.numel() else got,
                               want.contiguous().view(-1).view(torch.uint8) if want.numel() else want)


def test_pack_copies_so_the_source_may_change_afterwards():
    weight = torch.ones(4)
    info, buffer = pack_bucket([("w", weight)])
    weight.zero_()  # e.g. a ZeRO-3 release reusing the memory
    assert torch.equal(unpack_bucket(info, buffer)[0][1], torch.ones(4))


def test_unpack_rejects_a_buffer_that_does_not_match_its_metadata():
    info, buffer = pack_bucket([("w", torch.ones(4))])
    with pytest.raises(ValueError, match="12 bytes, but its metadata describes 16"):
        unpack_bucket(info, buffer[:12])
    with pytest.raises(ValueError):  # a name without a dtype
        unpack_bucket({**info, "dtype_names": []}, buffer)
