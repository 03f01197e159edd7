"""Counter-based sampling noise: the tensor hash equals the Python reference, is uniform, and
the inverse CDF samples each token in proportion to its probability."""

from __future__ import annotations

import math
import random

import pytest
import torch

from agent_lightning.ops.keyed_noise import inverse_cdf_sample, keyed_uniform, keyed_uniform_reference, keys_tensor


def _chi_square(counts, expected):
    return sum((c - e) ** 2 / e for c, e in zip(counts, expected) if e > 0)


def test_the_tensor_hash_equals_the_python_reference_bit_for_bit():
    rng = random.Random(0)
    keys = [0, 1, 2 ** 32 - 1, 2 ** 32, 2 ** 63 - 1] + [rng.randrange(2 ** 63) for _ in range(300)]
    positions = [0, 1, 2, 255, 2 ** 31, 2 ** 32 - 1]
    got = keyed_uniform(keys_tensor(keys), positions)
    want = torch.tensor([[keyed_uniform_reference(k, p) for p in positions] for k in keys], dtype=torch.float64)
    assert got.shape == (len(keys), len(positions)) and got.dtype == torch.float64
    assert torch.equal(got, want)
    assert float(got.min()) >= 0.0 and float(got.max()) < 1.0


def test_uniforms_are_uniform_and_unrelated_across_keys_and_positions():
    u = keyed_uniform(torch.arange(50_000), torch.arange(4))  # consecutive keys: the hardest case
    flat = u.flatten()
    counts = torch.histc(flat.float(), bins=20, min=0.0, max=1.0).tolist()
    # 19 degrees of freedom: P(chi2 > 60) is about 4e-6 for a uniform source.
    assert _chi_square(counts, [flat.numel() / 20] * 20) < 60, counts
    assert abs(float(flat.mean()) - 0.5) < 0.003 and abs(float(flat.var()) - 1 / 12) < 0.002
    for a, b in ((u[:, 0], u[:, 1]), (u[:-1, 0], u[1:, 0])):  # next position; next key
        corr = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
        assert abs(corr) < 0.02, corr
    assert len(set(flat.tolist())) == flat.numel()


def test_inverse_cdf_samples_in_proportion_and_never_a_zero():
    probs = torch.tensor([0.1, 0.0, 0.45, 0.05, 0.0, 0.4])
    n = 60_000
    tokens = inverse_cdf_sample(probs.repeat(n, 1), keyed_uniform(torch.arange(n), [7])[:, 0])
    counts = torch.bincount(tokens, minlength=6).tolist()
    assert counts[1] == counts[4] == 0
    expected = [p * n for p in probs.tolist()]
    assert _chi_square(counts, expected) < 25, counts  # 3 degrees of freedom: P(> 25) ~ 2e-5


def test_inverse_cdf_edges_pick_the_first_and_last_possible_tokens():
    probs = torch.tensor([[0.0, 0.3, 0.7, 0.0], [0.0, 0.3, 0.7, 0.0]])
    edges = torch.tensor([0.0, 1.0 - 2.0 ** -53], dtype=torch.float64)
    assert inverse_cdf_sample(probs, edges).tolist() == [1, 2]
    unnormalised = torch.tensor([[2.0, 6.0]])  # need not sum to one
    assert inverse_cdf_sample(unnormalised, torch.tensor([0.24])).tolist() == [0]
    assert inverse_cdf_sample(unnormalised, torch.tensor([0.26])).tolist() == [1]


@pytest.mark.parametrize("bad", [-1, 2 ** 63, 1.5, True])
def test_bad_keys_are_named(bad):
    with pytest.raises(ValueError, match=r"keys must be integers in \[0, 2\*\*63\)"):
        keys_tensor([3, bad])
    if isinstance(bad, int) and not isinstance(bad, bool):
        with pytest.raises(ValueError, match="keyed noise"):
            keyed_uniform_reference(bad, 0)


def test_positions_out_of_range_are_refused():
    with pytest.raises(ValueError, match="positions in"):
        keyed_uniform(torch.tensor([1]), torch.tensor([2 ** 32]))
    assert math.isclose(float(keyed_uniform([5], [3])[0, 0]), keyed_uniform_reference(5, 3))
