"""The KL reference of a full fine-tune is the starting policy, also after ``--resume``."""

from __future__ import annotations

import pytest
import torch

from agent_lightning.loop.trainer import Trainer


@pytest.mark.parametrize("algorithm", ["grpo", "rloo", "reinforce++"])
def test_resumed_full_finetune_keeps_the_initial_policy_as_kl_reference(tiny_config, tmp_path, algorithm):
    config = tiny_config(algorithm={"name": algorithm, "group_size": 4, "lr": 0.01, "kl_coef": 0.1},
                         trainer={"steps": 3, "batch_size": 8, "eval_episodes": 4, "checkpoint_every": 1})
    first = Trainer(config, tmp_path / "run")
    initial = {k: v.clone() for k, v in first.backend.model.state_dict().items()}
    first.run()
    trained = first.backend.model.state_dict()
    assert any(not torch.equal(initial[k], trained[k]) for k in initial), "training changed nothing"

    resumed = Trainer(config, tmp_path / "run")
    assert resumed.restore()
    reference = resumed.backend.reference_model().state_dict()
    policy = resumed.backend.model.state_dict()
    assert all(torch.equal(reference[k], initial[k]) for k in initial)
    assert any(not torch.equal(policy[k], initial[k]) for k in initial)
