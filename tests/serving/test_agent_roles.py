"""Roles: one LoRA adapter per agent role, each trained on its own calls and checkpointed apart."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from agent_lightning.config import load_config
from agent_lightning.loop.trainer import Trainer


def planner_only(task, llm):
    """Calls the planner role twice and never the solver; reward from the reply's first word."""
    from openai import OpenAI

    client = OpenAI(base_url=llm.base_url, api_key=llm.api_key, max_retries=0)
    messages = [dict(m) for m in task["prompt"]]
    reply = client.chat.completions.create(model="planner", messages=messages)
    text = reply.choices[0].message.content or ""
    return 1.0 if text[:1] in "123" else 0.0


def both_roles(task, llm):
    from openai import OpenAI

    client = OpenAI(base_url=llm.base_url, api_key=llm.api_key, max_retries=0)
    messages = [dict(m) for m in task["prompt"]]
    plan = client.chat.completions.create(model="planner", messages=messages).choices[0].message.content or ""
    answer = client.chat.completions.create(model="solver", messages=messages + [{"role": "user", "content": plan}])
    text = answer.choices[0].message.content or ""
    return 1.0 if text[:1] in "123" else 0.0


def _config(entrypoint: str, tmp_path, steps: int = 1):
    return load_config("quickstart-agent", [
        f"agent.entrypoint={entrypoint}", "agent.options={}", "agent.roles={planner: {}, solver: {lora: {r: 2, alpha: 4}}}",
        "model.lora={r: 4, alpha: 8}", f"trainer.steps={steps}", "trainer.batch_size=4", "algorithm.group_size=4",
        "trainer.eval_episodes=4", "trainer.checkpoint_every=1", "algorithm.lr=0.05", f"trainer.output_dir={tmp_path}",
        "trackers=[jsonl]"])


def _adapter(backend, role):
    return {k: v.clone() for k, v in backend.weights_state_dict(role).items()}


def test_a_role_trains_only_its_adapter_on_its_own_calls(tmp_path):
    trainer = Trainer(_config("test_agent_roles:planner_only", tmp_path), tmp_path / "run")
    assert trainer.backend.roles == ["planner", "solver"]
    before = {role: _adapter(trainer.backend, role) for role in ("planner", "solver")}
    assert any(v.shape[0] == 2 or v.shape[1] == 2 for v in before["solver"].values())  # the solver's own r=2
    trainer.run()
    after = {role: _adapter(trainer.backend, role) for role in ("planner", "solver")}
    changed = {role: any(not (before[role][k] == after[role][k]).all() for k in before[role]) for role in before}
    assert changed == {"planner": True, "solver": False}
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    step1 = next(m for m in metrics if m["step"] == 1)
    assert "train/planner/pg_loss" in step1 and not any(k.startswith("train/solver/") for k in step1)
    assert step1["agent/prefix_breaks"] == 0
    checkpoint = tmp_path / "run" / "checkpoints" / "step-1"
    for role in ("planner", "solver"):
        saved = load_file(str(checkpoint / f"adapter-{role}.safetensors"))
        assert set(saved) == set(after[role]) and all((saved[k] == after[role][k]).all() for k in saved)


def test_two_roles_each_train_and_resume_restores_both(tmp_path):
    config = _config("test_agent_roles:both_roles", tmp_path, steps=1)
    trainer = Trainer(config, tmp_path / "run")
    result = trainer.run()
    assert result.steps == 1
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    step1 = next(m for m in metrics if m["step"] == 1)
    assert "train/planner/pg_loss" in step1 and "train/solver/pg_loss" in step1
    assert "eval/planner/episodes" in step1 and "eval/solver/episodes" in step1
    trained = {role: _adapter(trainer.backend, role) for role in ("planner", "solver")}
    fresh = Trainer(config, tmp_path / "run")
    assert fresh.restore()
    for role in ("planner", "solver"):
        restored = _adapter(fresh.backend, role)
        assert all((restored[k] == trained[role][k]).all() for k in restored)
    fresh.rollout_executor.close()


def test_roles_need_lora():
    with pytest.raises(ValueError, match="agent.roles: each role trains its own LoRA adapter; set model.lora"):
        load_config("quickstart-agent", ["agent.roles={a: {}}"])
