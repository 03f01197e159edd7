"""The component contract in ``types.py`` is enough: a backend written from the Protocol
alone (``contract_backend.py``: pure torch, subclassing nothing) passes ``check_backend`` and
trains the quickstart; the built-in backend and algorithms pass the same checks."""

from __future__ import annotations

import pytest
from contract_backend import ContractBackend

from agent_lightning.hookspecs import hookimpl
from agent_lightning.metrics import read_metrics
from agent_lightning.testing import ConformanceError, check_algorithm, check_backend


class ContractPlugin:
    @hookimpl
    def register_backends(self, register):
        register("contract", ContractBackend)


def _contract_backend(seed: int = 0) -> ContractBackend:
    return ContractBackend(None, None, seed=seed)


def test_the_protocol_backend_passes_check_backend():
    facts = check_backend(_contract_backend())
    assert facts["vocab_size"] == 64 and facts["max_logprob_gap"] < 1e-5


def test_the_builtin_backend_passes_check_backend(al_tiny_policy):
    check_backend(al_tiny_policy)


def test_check_backend_names_a_missing_member_and_a_sampling_mismatch():
    backend = _contract_backend()
    del backend.vocab_size
    with pytest.raises(ConformanceError, match="missing required Backend member\\(s\\) vocab_size"):
        check_backend(backend)
    drifting = _contract_backend()
    original = drifting.token_logprobs
    drifting.token_logprobs = lambda batch, **kw: (lambda lp, ent: (lp + 0.1, ent))(*original(batch, **kw))
    with pytest.raises(ConformanceError, match="differ from the sampling ones"):
        check_backend(drifting)


@pytest.mark.parametrize("name, options", [("grpo", {"group_size": 2}), ("rloo", {"group_size": 2}),
                                           ("reinforce++", {"group_size": 2}), ("dpo", {"pairs": "online", "group_size": 2})])
def test_the_builtin_algorithms_pass_check_algorithm_on_the_protocol_backend(name, options):
    from agent_lightning.plugins import create_component, get_plugin_manager

    algorithm = create_component(get_plugin_manager(), "algorithm", "algorithm", name, **options)
    metrics = check_algorithm(algorithm, _contract_backend())
    assert metrics  # an update ran and reported


def test_ppo_passes_check_algorithm_on_the_builtin_backend(al_tiny_policy):
    from agent_lightning.plugins import create_component, get_plugin_manager

    ppo = create_component(get_plugin_manager(), "algorithm", "algorithm", "ppo")
    assert check_algorithm(ppo, al_tiny_policy)


@pytest.mark.slow
def test_the_protocol_backend_trains_the_quickstart(tmp_path):
    from agent_lightning.config import load_config
    from agent_lightning.loop.trainer import Trainer
    from agent_lightning.plugins import build_plugin_manager

    pm = build_plugin_manager(autoload=False, blocked=["agent_lightning.backends.transformers.backend"],
                              extra_plugins=[("contract", ContractPlugin())], strict=True)
    assert list(pm.registries["backend"].names()) == ["contract"]
    config = load_config("quickstart", ["backend.name=contract", "algorithm.lr=0.01", "trainer.steps=40",
                                        "trainer.batch_size=16", "trainer.eval_every=0", "trainer.eval_episodes=60",
                                        "trackers=[jsonl]"], environ={})
    result = Trainer(config, tmp_path / "run", plugin_manager=pm).run()
    records = read_metrics(tmp_path / "run")
    first, last = result.first_eval["eval/success_rate"], result.last_eval["eval/success_rate"]
    print(f"protocol backend, quickstart: held-out success {first:.3f} -> {last:.3f}")
    assert result.steps == 40 and first <= 0.2, first
    assert last >= first + 0.3, (first, last)
    train = [r["train/reward_mean"] for r in records if "train/reward_mean" in r]
    assert sum(train[-10:]) > sum(train[:10])
    assert (tmp_path / "run" / "checkpoints" / "step-40" / "gru.safetensors").is_file()


def test_a_backend_without_counter_noise_refuses_it_by_name(tmp_path):
    from agent_lightning.config import ConfigError, load_config
    from agent_lightning.loop.trainer import Trainer
    from agent_lightning.plugins import build_plugin_manager

    pm = build_plugin_manager(autoload=False, blocked=["agent_lightning.backends.transformers.backend"],
                              extra_plugins=[("contract", ContractPlugin())], strict=True)
    config = load_config("quickstart", ["backend.name=contract", "sampling.noise=counter", "trackers=[jsonl]"], environ={})
    with pytest.raises(ConfigError, match="sampling.noise: the 'contract' backend cannot sample with counter noise"):
        Trainer(config, tmp_path / "run", plugin_manager=pm)


def test_check_backend_names_a_backend_that_claims_counter_noise_but_ignores_the_keys():
    backend = _contract_backend()
    backend.counter_noise = True
    with pytest.raises(ConformanceError, match="sets counter_noise but"):
        check_backend(backend)


def test_check_backend_names_a_token_loss_whose_gradient_differs(al_tiny_policy):
    original = al_tiny_policy.token_loss

    def steeper(batch, loss_of, **kw):  # same value, 1.5x the gradient
        loss, logp, entropy = original(batch, loss_of, **kw)
        return loss + 0.5 * (loss - loss.detach()), logp, entropy

    al_tiny_policy.token_loss = steeper
    with pytest.raises(ConformanceError, match="token_loss: gradient norm .* but token_logprobs \\+ autograd give"):
        check_backend(al_tiny_policy)
