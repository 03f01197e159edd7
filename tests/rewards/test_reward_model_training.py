"""``alightning train-reward-model``: a Bradley–Terry model trained on a preference set built
here ranks held-out pairs above chance, is saved as safetensors + JSON, and the
``reward-model`` reward scores with it."""

from __future__ import annotations

import json

import pytest

from agent_lightning import cli
from agent_lightning.preferences import ConversationEncoder, load_preferences, split_pairs, write_preferences
from agent_lightning.presets.guess_number_preferences import build_pairs


@pytest.mark.slow
def test_trained_reward_model_ranks_held_out_pairs_above_chance(tmp_path, capsys):
    import torch

    from agent_lightning.plugins import get_plugin_manager
    from agent_lightning.reward_model import load_reward_model

    data = tmp_path / "prefs.jsonl"
    write_preferences(build_pairs(200, seed=3), data)
    out = tmp_path / "rm"
    code = cli.main(["train-reward-model", str(data), "model.preset_options={hidden_size: 32, num_layers: 1, num_heads: 2}",
                     "--output-dir", str(out), "--epochs", "2", "--lr", "0.003", "--eval-fraction", "0.25", "--seed", "0"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "held-out pairwise accuracy: " in printed and f"reward model: {out}" in printed
    assert {"config.json", "model.safetensors", "reward_head.safetensors", "reward_model.json",
            "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert not list(out.glob("*.bin")) and not list(out.glob("*.pt"))  # no pickle anywhere
    meta = json.loads((out / "reward_model.json").read_text())
    assert meta["format"] == "agent-lightning-reward-model"
    assert (meta["train_pairs"], meta["eval_pairs"]) == (150, 50)
    assert meta["eval_accuracy_after"] >= 0.75, meta
    assert meta["eval_accuracy_after"] > meta["eval_accuracy_before"]

    # The saved model, loaded back, reproduces the held-out accuracy it reported.
    model, tokenizer, _ = load_reward_model(out)
    _, held = split_pairs(load_preferences(data), 0.25, seed=0)
    encoder = ConversationEncoder(tokenizer)
    sides = [encoder.encode_pair(p) for p in held]
    with torch.no_grad():
        chosen = model.score_ids([c.token_ids for c, _ in sides])
        rejected = model.score_ids([r.token_ids for _, r in sides])
    accuracy = float(((chosen > rejected).float() + 0.5 * (chosen == rejected).float()).mean())
    assert accuracy == pytest.approx(meta["eval_accuracy_after"], abs=1e-6)

    # The reward plugin scores trajectories (here the encoded conversations) with it, normalised.
    reward = get_plugin_manager().rewards.create("reward-model", path=str(out), normalize="fixed", clip=3.0)
    scores = reward.batch([c for c, _ in sides] + [r for _, r in sides])
    expected = ((torch.cat([chosen, rejected]) - meta["reward_mean"]) / meta["reward_std"]).clamp(-3, 3)
    assert scores == pytest.approx(expected.tolist(), abs=1e-4)


def test_cli_errors_are_one_line(tmp_path, capsys):
    data = tmp_path / "prefs.jsonl"
    write_preferences(build_pairs(4), data)
    assert cli.main(["train-reward-model", str(data), "trainer.steps=3", "--output-dir", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == "error: train-reward-model: override 'trainer.steps=3' must set a model.* key"
    assert cli.main(["train-reward-model", str(tmp_path / "none.jsonl"), "--output-dir", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith("error: data: '")
    assert cli.main(["train-reward-model", str(data), "--output-dir", str(tmp_path / "o"), "--epochs", "0"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: invalid value 0 for 'epochs'")
