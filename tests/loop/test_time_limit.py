"""trainer.time_limit_s: training stops after the step that runs past it, then evaluates and saves."""

from __future__ import annotations

from agent_lightning.loop.trainer import Trainer


def test_time_limit_ends_training_with_the_final_eval_and_checkpoint(tiny_config, tmp_path):
    from agent_lightning.metrics import read_metrics

    config = tiny_config(trainer={"steps": 50, "time_limit_s": 1e-6})
    result = Trainer(config, tmp_path / "run").run()
    assert result.steps == 1
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records if "eval/success_rate" in r] == [0, 1]
    assert (tmp_path / "run" / "checkpoints" / "step-1").is_dir()


def test_no_limit_runs_every_step(tiny_config, tmp_path):
    result = Trainer(tiny_config(trainer={"steps": 2}), tmp_path / "run").run()
    assert result.steps == 2
