"""``alightning eval`` on a real (tiny) trained run: base + every checkpoint, numbers equal
to the evaluation logged during training, results in JSON and in the run's trackers."""

from __future__ import annotations

import json
import subprocess

import pytest

from agent_lightning.metrics import read_metrics

SAME_AS_TRAINING = ("success_rate", "mean_reward", "mean_turns", "tokens_per_episode", "failed_episodes")


def test_eval_cli_shows_base_and_both_checkpoints(al_eval_run_copy, alightning, cli_env, tmp_path):
    run_dir = al_eval_run_copy
    for var in ("FORCE_COLOR", "FORCE_TERMINAL", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        cli_env.pop(var, None)
    result = subprocess.run([*alightning, "eval", str(run_dir), "--samples", "2", "--json", str(tmp_path / "out.json")],
                            capture_output=True, text=True, env=cli_env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    # Not a terminal: no progress bar and no colour codes, only the tables.
    assert "\x1b" not in result.stdout + result.stderr
    assert "evaluating" not in result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("│")]
    assert [row.split("│")[1].strip() for row in rows[:3]] == ["base (step 0)", "step 1", "step 2"]
    assert "pass@2" in result.stdout and "95% CI" in result.stdout
    assert "success, base -> step 2:" in result.stdout

    doc = json.loads((run_dir / "eval" / "results.json").read_text())
    assert doc == json.loads((tmp_path / "out.json").read_text())
    assert [r["step"] for r in doc["checkpoints"]] == [0, 1, 2]
    # The harness plays exactly the training-time evaluation: same weights (the base rebuilt
    # from the seed, then each checkpoint), same episodes, same sampling noise.
    records = read_metrics(run_dir)
    logged = {r["step"]: r for r in records if "eval/success_rate" in r}
    assert sorted(logged) == [0, 1, 2]
    for r in doc["checkpoints"]:
        for key in SAME_AS_TRAINING:
            assert r[key] == logged[r["step"]][f"eval/{key}"], (r["step"], key)
    # Training changed the policy, so these equalities do tell the checkpoints apart.
    assert len({r["tokens_per_episode"] for r in doc["checkpoints"]}) > 1
    # ... and the results went to the run's trackers (jsonl), at each checkpoint's step.
    ckpt_records = [r for r in records if "ckpt_eval/success_rate" in r]
    assert [r["step"] for r in ckpt_records] == [0, 1, 2]
    assert [r["ckpt_eval/tokens_per_episode"] for r in ckpt_records] == [r["tokens_per_episode"] for r in doc["checkpoints"]]
    assert ckpt_records[0]["ckpt_eval/pass_at_2"] == doc["checkpoints"][0]["pass_at_k"]["2"]


def test_eval_cli_errors_are_one_line(al_eval_run_copy, tmp_path, capsys):
    from agent_lightning.cli.main import main

    assert main(["eval", str(tmp_path / "missing")]) == 2
    assert main(["eval", str(al_eval_run_copy), "--split", "test"]) == 2
    assert main(["eval", str(al_eval_run_copy), "trainer.seed=3"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)
    assert "no config.yaml" in err[0] and "'test'" in err[1] and "trainer.seed=3" in err[2]


def _initial_weights(config, run_dir):
    from agent_lightning.loop.trainer import Trainer

    trainer = Trainer(config.model_copy(update={"trackers": []}), run_dir)
    try:
        return {k: v.detach().clone() for k, v in trainer.backend.model.state_dict().items()}
    finally:
        trainer.envs.close()
        trainer.executor.shutdown(wait=False)


@pytest.mark.parametrize("lora", [False, True])
def test_the_base_model_is_rebuilt_exactly_from_the_seed(tiny_config, tmp_path, lora):
    """What ``alightning eval`` relies on for step 0: building the trainer twice from one
    config gives the same initial weights (LoRA adapters included), and another seed does not."""
    import torch

    model = {"lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}} if lora else {}
    config = tiny_config(model=model)
    first = _initial_weights(config, tmp_path / "a")
    torch.manual_seed(1234)  # whatever the global RNG holds before, the trainer reseeds it
    second = _initial_weights(config, tmp_path / "b")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    if lora:
        assert any("lora_A" in k for k in first)
    other = _initial_weights(tiny_config(model=model, trainer={"seed": 1}), tmp_path / "c")
    changed = [k for k in first if not torch.equal(first[k], other[k])]
    assert changed and (not lora or any("lora_A" in k for k in changed))
