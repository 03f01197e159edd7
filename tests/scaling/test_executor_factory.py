"""``create_executor``: every executor name the config accepts has a builder (so the factory
needs no "unknown executor" branch), and the default builds the in-process executor."""

from __future__ import annotations

from typing import get_args


def test_the_factory_knows_exactly_the_names_the_config_accepts():
    from agent_lightning.config import ExecutorConfig
    from agent_lightning.scaling.executors import EXECUTORS

    assert set(get_args(ExecutorConfig.model_fields["name"].annotation)) == set(EXECUTORS)


def test_the_default_executor_plays_in_process_with_the_trainer_components(tiny_config):
    from agent_lightning.scaling.executors import create_executor
    from agent_lightning.scaling.executors.inprocess import InProcessExecutor

    config = tiny_config()
    backend, envs, threads = object(), object(), object()
    executor = create_executor(config, backend=backend, envs=envs, threads=threads, plugin_manager=None)
    assert isinstance(executor, InProcessExecutor) and executor.name == "inprocess"
    assert (executor.backend, executor.envs, executor.threads) == (backend, envs, threads)
    assert executor.step_timeout_s == config.trainer.step_timeout_s and executor.sampling == config.sampling
