"""The shipped testing kit: conformance suite on every built-in environment, on broken
environments and rewards (it must fail them), and the pytest plugin's fixtures."""

from __future__ import annotations

import math
import types

import pytest

from agent_lightning.hookspecs import hookimpl
from agent_lightning.testing import ConformanceError, check_environment, check_reward
from agent_lightning.types import Observation, StepResult, Task

BUILTIN_ENVIRONMENTS = {
    "guess-number": {"max_number": 6, "max_turns": 3},
    "tool-use": {"max_turns": 3, "num_train": 6, "num_eval": 6},
    "code": {"max_attempts": 2},
    "web": {"max_turns": 4},
    "api": {"max_turns": 4, "num_train": 7, "num_eval": 7},
}


@pytest.fixture(scope="module")
def builtins():
    from agent_lightning.plugins import build_plugin_manager

    return build_plugin_manager(autoload=False, strict=True)


@pytest.mark.parametrize("name", sorted(BUILTIN_ENVIRONMENTS))
def test_builtin_environment_conforms(builtins, name):
    report = check_environment(builtins.environments.get(name).factory, **BUILTIN_ENVIRONMENTS[name])
    assert report["episodes"] == 4 and report["steps"] >= 4


def test_every_builtin_environment_is_covered(builtins):
    assert sorted(entry.name for entry in builtins.environments) == sorted(BUILTIN_ENVIRONMENTS)


def test_builtin_rewards_conform(builtins):
    from agent_lightning.envs.guess_number import GuessNumberEnv

    tasks = GuessNumberEnv(max_number=3).tasks("train")
    for name in ("env-reward", "success"):
        report = check_reward(builtins.rewards.get(name).factory, tasks=tasks)
        assert report["trajectories"] == 4 * len(tasks) and all(math.isfinite(v) for v in report["values"])


def test_token_budget_uses_the_tokenizer():
    from agent_lightning.envs.guess_number import GuessNumberEnv

    words = str.split  # a whitespace "tokenizer"
    check_environment(GuessNumberEnv, max_number=6, tokenizer=words, observation_token_budget=20)
    with pytest.raises(ConformanceError, match="tokens, over the budget of 3"):
        check_environment(GuessNumberEnv, max_number=6, tokenizer=words, observation_token_budget=3)


# ----------------------------------------------------------------------------- broken components


class _Toy:
    """A correct one-number environment; subclasses break one rule each."""

    def __init__(self, turns: int = 3):
        self.turns, self._n = turns, None

    def tasks(self, split):
        return [Task(id=f"{split}-{i}", prompt=({"role": "user", "content": "say a number"},), split=split) for i in range(2)]

    def reset(self, task):
        self._n = 0
        return Observation(task.prompt)

    def step(self, action):
        self._n += 1
        done = self._n >= self.turns
        return StepResult(None if done else Observation.user(f"turn {self._n}"), reward=float(done), done=done,
                          info={"success": done})

    def close(self):
        self._n = None


class _RaisesOnGarbage(_Toy):
    def step(self, action):
        int(action)  # ValueError on anything that is not a number
        return super().step(action)


class _NeverEnds(_Toy):
    def step(self, action):
        return StepResult(Observation.user("again"))


class _Random(_Toy):
    counter = 0

    def step(self, action):
        _Random.counter += 1
        return StepResult(Observation.user(f"noise {_Random.counter}"), done=_Random.counter % 4 == 0)


class _NanReward(_Toy):
    def step(self, action):
        return StepResult(None, reward=math.nan, done=True)


class _CloseOnce(_Toy):
    def close(self):
        if self._n is None:
            raise RuntimeError("already closed")
        self._n = None

    def __init__(self, turns: int = 3):
        super().__init__(turns)
        self._n = 0


class _DuplicateIds(_Toy):
    def tasks(self, split):
        return super().tasks(split) * 2


class _SharedIds(_Toy):
    def tasks(self, split):
        return [Task(id="same", prompt=({"role": "user", "content": "x"},), split=split)]


class _Verbose(_Toy):
    def step(self, action):
        result = super().step(action)
        return StepResult(Observation.user("x" * 20000), done=False) if not result.done else result


class _BadMessages(_Toy):
    def reset(self, task):
        super().reset(task)
        return Observation(({"role": "robot", "content": 3},))


@pytest.mark.parametrize("broken, message", [
    (_RaisesOnGarbage, "step raised ValueError"),
    (_NeverEnds, "did not end within the step budget of 64"),
    (_Random, "not deterministic"),
    (_NanReward, "finite number"),
    (_CloseOnce, "close\\(\\) is not idempotent"),
    (_DuplicateIds, "repeats ids"),
    (_SharedIds, "share task ids"),
    (_Verbose, "over the budget of 16000"),
    (_BadMessages, "role in"),
])
def test_broken_environments_fail_naming_the_rule(broken, message):
    check_environment(_Toy)  # the unbroken one passes
    with pytest.raises(ConformanceError, match=message):
        check_environment(broken)


def test_broken_rewards_fail():
    check_reward(lambda: (lambda traj: 0.5))
    with pytest.raises(ConformanceError, match="non-finite"):
        check_reward(lambda: (lambda traj: math.inf))
    with pytest.raises(ConformanceError, match="raised KeyError"):
        check_reward(lambda: (lambda traj: traj.task.reference["answer"]))
    values = iter(range(1000))
    with pytest.raises(ConformanceError, match="not deterministic"):
        check_reward(lambda: (lambda traj: float(next(values))))


# ----------------------------------------------------------------------------- fixtures


def test_plugin_manager_fixture_holds_only_the_plugin(al_plugin_manager):
    plugin = types.ModuleType("toy_plugin")

    @hookimpl
    def register_environments(register):
        register("toy", _Toy)

    plugin.register_environments = register_environments
    pm = al_plugin_manager(plugin)
    assert [e.name for e in pm.environments] == ["toy"]
    assert [e.source.plugin for e in pm.environments] == ["under-test:toy_plugin"]
    assert list(pm.rewards) == [] and list(pm.algorithms) == [] and list(pm.backends) == []


def test_plugin_manager_fixture_accepts_a_builtin_module(al_plugin_manager):
    from agent_lightning.envs import api

    pm = al_plugin_manager(api)
    assert [e.name for e in pm.environments] == ["api"]


def test_plugin_manager_fixture_is_strict(al_plugin_manager):
    from agent_lightning.plugins import PluginError

    class Misspelled:
        @hookimpl
        def register_enviroments(self, register):
            register("x", _Toy)

    with pytest.raises(PluginError, match="did you mean 'register_environments'"):
        al_plugin_manager(Misspelled())


def test_tiny_policy_fixture(al_tiny_policy):
    assert al_tiny_policy.model.config.hidden_size == 32 and str(al_tiny_policy.device) == "cpu"
    prompt = al_tiny_policy.encode_prompt([{"role": "user", "content": "hi"}])
    generation = al_tiny_policy.generate([prompt], temperature=1.0, max_new_tokens=3)[0]
    assert 1 <= len(generation.token_ids) <= 3 and all(lp <= 0 for lp in generation.logprobs)


def test_pytest_plugin_is_registered_through_its_entry_point(pytestconfig):
    import importlib.metadata as metadata

    entry = [ep for ep in metadata.entry_points(group="pytest11") if ep.name == "agent_lightning"]
    assert [ep.value for ep in entry] == ["agent_lightning.testing.plugin"]
    assert pytestconfig.pluginmanager.hasplugin("agent_lightning")


class _EveryHook:
    """One plugin object implementing all six hooks of the contract."""

    @hookimpl
    def register_environments(self, register):
        register("toy-env", _Toy)

    @hookimpl
    def register_rewards(self, register):
        register("toy-reward", lambda scale=1.0: (lambda traj: scale * float(traj.success)))

    @hookimpl
    def register_algorithms(self, register):
        from agent_lightning.algorithms.grpo import GRPO

        register("toy-algorithm", GRPO)

    @hookimpl
    def register_trackers(self, register):
        register("toy-tracker", lambda run_dir: ("tracker", run_dir))

    @hookimpl
    def register_backends(self, register):
        register("toy-backend", lambda model_config, backend_config, seed=0: ("backend", model_config, seed))

    @hookimpl
    def register_agents(self, register):
        register("toy-agent", lambda bonus=0.0: (lambda task, llm: 1.0 + bonus))


def test_every_hook_registers_through_the_plugin_manager_fixture(al_plugin_manager, tmp_path):
    pm = al_plugin_manager(_EveryHook())
    assert {kind: [e.name for e in registry] for kind, registry in pm.registries.items()} == {
        "environment": ["toy-env"], "reward": ["toy-reward"], "algorithm": ["toy-algorithm"],
        "tracker": ["toy-tracker"], "backend": ["toy-backend"], "agent": ["toy-agent"]}
    check_environment(pm.environments.get("toy-env").factory)
    check_reward(pm.rewards.get("toy-reward").factory, scale=2.0)
    assert pm.algorithms.create("toy-algorithm", group_size=3).group_size == 3
    assert pm.trackers.create("toy-tracker", run_dir=str(tmp_path)) == ("tracker", str(tmp_path))
    assert pm.backends.create("toy-backend", "model", "backend", seed=4) == ("backend", "model", 4)
    assert pm.agents.create("toy-agent", bonus=0.5)({"id": "t"}, None) == 1.5
