"""``alightning train-reward-model``: a Bradley–Terry model trained on a preference set built
here ranks held-out pairs above chance, is saved as safetensors + JSON, and the
``reward-model`` reward scores with it."""

from __future__ import annotations

import json

import pytest

from agent_lightning.cli import main as cli
from agent_lightning.preferences.data import ConversationEncoder, load_preferences, split_pairs, write_preferences
from agent_lightning.presets.guess_number_preferences import build_pairs


@pytest.mark.slow
def test_trained_reward_model_ranks_held_out_pairs_above_chance(tmp_path, capsys):
    import torch

    from agent_lightning.plugins import get_plugin_manager
    from agent_lightning.preferences.reward_model import load_reward_model

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


def test_lora_layers_option_puts_adapters_on_the_chosen_layers_only(tmp_path, monkeypatch):
    """``model.lora.layers`` is honoured as by the policy backend: with ``layers: 1`` on a
    2-layer model only the top layer gets adapters (and trains)."""
    from pathlib import Path

    from agent_lightning.preferences import reward_model

    trained = {}

    def keep(model, tokenizer, output_dir, **kwargs):  # inspect the model before LoRA is merged
        trained["names"] = [n for n, p in model.backbone.named_parameters() if p.requires_grad]
        return Path(output_dir)

    monkeypatch.setattr(reward_model, "save_reward_model", keep)
    data = tmp_path / "prefs.jsonl"
    write_preferences(build_pairs(8, seed=1), data)
    code = cli.main(["train-reward-model", str(data), "model.preset_options={hidden_size: 32, num_layers: 2, num_heads: 2}",
                     "model.lora={r: 4, layers: 1}", "--output-dir", str(tmp_path / "rm"), "--epochs", "1"])
    assert code == 0
    names = trained["names"]
    assert names and all("lora_" in n and ".layers.1." in n for n in names), names
    adapted = {n.split(".layers.1.")[1].rsplit(".lora_", 1)[0] for n in names}
    assert {"self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"} <= adapted  # all-linear, spelled out
