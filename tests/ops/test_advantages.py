"""agent_lightning.ops.group_advantages against hand values and a loop-over-groups reference."""

import pytest
import torch

from _kernel_params import HAS_CUDA
from agent_lightning.ops import group_advantages

DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])


def _reference(rewards, group_ids, mode, eps):
    out = torch.zeros(len(rewards), dtype=torch.float64)
    for g in set(group_ids.tolist()):
        idx = (group_ids == g).nonzero().squeeze(1)
        r = rewards[idx].double()
        n = len(idx)
        if n < 2:
            continue
        if mode == "grpo":
            out[idx] = (r - r.mean()) / (r.std(correction=1) + eps)
        elif mode == "drgrpo":
            out[idx] = r - r.mean()
        else:
            for k, i in enumerate(idx.tolist()):
                others = torch.cat([r[:k], r[k + 1 :]])
                out[i] = r[k] - others.mean()
    return out


@pytest.mark.parametrize("device", DEVICES)
def test_hand_values(device):
    # group 7: rewards [1, 2, 6] (mean 3, unbiased std sqrt(7)); group 3: [4] alone; group -2: [0, 2].
    rewards = torch.tensor([1.0, 4.0, 2.0, 0.0, 6.0, 2.0], device=device)
    ids = torch.tensor([7, 3, 7, -2, 7, -2], device=device)
    s7 = 7**0.5
    grpo = group_advantages(rewards, ids, mode="grpo", eps=0.0)
    expected = torch.tensor([-2 / s7, 0.0, -1 / s7, -1 / 2**0.5, 3 / s7, 1 / 2**0.5])
    torch.testing.assert_close(grpo.cpu(), expected)
    drgrpo = group_advantages(rewards, ids, mode="drgrpo")
    torch.testing.assert_close(drgrpo.cpu(), torch.tensor([-2.0, 0.0, -1.0, -1.0, 3.0, 1.0]))
    # rloo: 1 - mean(2, 6) = -3; 2 - mean(1, 6) = -1.5; 6 - mean(1, 2) = 4.5; 0 - 2; 2 - 0.
    rloo = group_advantages(rewards, ids, mode="rloo")
    torch.testing.assert_close(rloo.cpu(), torch.tensor([-3.0, 0.0, -1.5, -2.0, 4.5, 2.0]))
    assert grpo.dtype == drgrpo.dtype == rloo.dtype == torch.float32
    assert grpo.device.type == device


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["grpo", "drgrpo", "rloo"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_groups_against_reference(device, mode, seed):
    gen = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, 8, (23,), generator=gen)
    labels = torch.randperm(10_000, generator=gen)[: len(sizes)] * 97 - 5000  # arbitrary, unsorted
    ids = torch.repeat_interleave(labels, sizes)
    perm = torch.randperm(len(ids), generator=gen)
    ids = ids[perm]
    rewards = torch.randn(len(ids), generator=gen) * 3 + 1
    out = group_advantages(rewards.to(device), ids.to(device), mode=mode, eps=1e-6)
    expected = _reference(rewards, ids, mode, 1e-6)
    torch.testing.assert_close(out.cpu().double(), expected, atol=1e-5, rtol=1e-5)


def test_constant_group_and_singletons_are_zero():
    out = group_advantages(torch.tensor([5.0, 5.0, 5.0, 9.0]), torch.tensor([1, 1, 1, 2]))
    assert torch.equal(out, torch.zeros(4))


def test_empty_input():
    out = group_advantages(torch.zeros(0), torch.zeros(0, dtype=torch.long))
    assert out.shape == (0,) and out.dtype == torch.float32


def test_bad_arguments():
    with pytest.raises(ValueError, match="grpo, drgrpo, rloo"):
        group_advantages(torch.zeros(3), torch.zeros(3, dtype=torch.long), mode="ppo")
    with pytest.raises(ValueError, match="group_ids"):
        group_advantages(torch.zeros(3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        group_advantages(torch.zeros(3), torch.zeros(3))
