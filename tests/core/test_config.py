"""Config loading, overrides and errors that list every problem (checked through the real CLI)."""

from __future__ import annotations

import re

import subprocess

import pytest
import yaml

from agent_lightning.config import ConfigError, apply_overrides, load_config, parse_options, read_yaml, validate


def test_quickstart_preset_loads_and_overrides_parse_as_yaml():
    config = load_config(None, ["trainer.steps=4", "trackers=[console,jsonl]", "algorithm.name=grpo",
                                "algorithm.group_size=3", "sampling.temperature=0.7"])
    assert config.environment.name == "guess-number"
    assert config.trainer.steps == 4
    assert [t.name for t in config.trackers] == ["console", "jsonl"]
    assert config.algorithm.options["group_size"] == 3
    assert config.sampling.temperature == 0.7


def test_choosing_another_component_drops_the_old_components_options():
    data = apply_overrides({"environment": {"name": "guess-number", "max_number": 10}},
                           ["environment.name=countdown", "environment.max_start=4"])
    assert data["environment"] == {"name": "countdown", "max_start": 4}
    kept = apply_overrides({"environment": {"name": "guess-number", "max_number": 10}}, ["environment.name=guess-number"])
    assert kept["environment"] == {"name": "guess-number", "max_number": 10}


def test_override_creates_nested_sections_and_rejects_bad_forms():
    data = apply_overrides({}, ["a.b.c=1", "a.d=[x, y]"])
    assert data == {"a": {"b": {"c": 1}, "d": ["x", "y"]}}
    with pytest.raises(ConfigError, match="not of the form key.path=value"):
        apply_overrides({}, ["trainer.steps"])
    with pytest.raises(ConfigError, match="'trainer.steps' is a value, not a section"):
        apply_overrides({"trainer": {"steps": 3}}, ["trainer.steps.x=1"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.stepz=3", "unknown key 'trainer.stepz' (allowed: batch_size, checkpoint_errors, checkpoint_every, distributed, eval_episodes, eval_every, executor, keep_checkpoints, log_trajectories, max_failure_rate, max_skipped_updates, output_dir, replay, seed, step_timeout_s, steps, time_limit_s); did you mean 'steps'?"),
        ("trainer.steps=many", "invalid value 'many' for 'trainer.steps': Input should be a valid integer, unable to parse string as an integer"),
        ("sampling.top_p=1.5", "invalid value 1.5 for 'sampling.top_p': Input should be less than or equal to 1"),
        ("backend.device=tpu", "invalid value 'tpu' for 'backend.device': Input should be 'auto', 'cpu' or 'cuda'; did you mean 'cpu'?"),
        ("modle.preset=tiny", "unknown key 'modle' (allowed: agent, algorithm, backend, environment, model, reward, sampling, trackers, trainer); did you mean 'model'?"),
    ],
)
def test_validation_errors_name_key_value_and_allowed(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert str(err.value) == message


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  preset: tiny\n trainer: [\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: malformed YAML at line 3"):
        read_yaml(str(path))


def test_unknown_config_source_lists_presets():
    with pytest.raises(ConfigError, match=r"config 'nope.yaml' is neither a file nor a packaged preset \(presets: .*quickstart"):
        read_yaml("nope.yaml")


def _cli(alightning, cli_env, tmp_path, *args):
    return subprocess.run([*alightning, "run", *args, "--output-dir", str(tmp_path / "run")],
                          capture_output=True, text=True, env=cli_env, timeout=120)


# Every registered environment, sorted: the built-ins, and any plugin that another test worker has
# pip-installed meanwhile (tests/ecosystem/test_scaffold_plugin.py installs 'kitdemo' into this environment).
KNOWN_ENVIRONMENTS = re.compile(r"error: environment\.name: unknown environment 'guess-numbr' "
                                r"\(known: (?P<known>[\w, -]+)\); did you mean 'guess-number'\?")
BUILT_IN_ENVIRONMENTS = {"api", "code", "guess-number", "tool-use", "web"}


@pytest.mark.parametrize(
    "args, expected",
    [
        (["trainer.stepz=1"], "error: unknown key 'trainer.stepz'"),
        (["environment.name=guess-numbr"], KNOWN_ENVIRONMENTS),
        (["reward.name=exactmatch"], "error: reward.name: unknown reward 'exactmatch'"),
        (["algorithm.clip_lo=0.1"], "error: unknown key 'algorithm.clip_lo' (allowed:"),
        (["algorithm.group_size=zero"], "error: invalid value 'zero' for 'algorithm.group_size'"),
        (["environment.max_number=1"], "error: environment.max_number must be at least 2, got 1"),
        (["environment.colour=red"], "error: unknown key 'environment.colour' for environment 'guess-number'"),
        (["trackers=[console, jsonl, tensorbord]"], "error: trackers[tensorbord].name: unknown tracker 'tensorbord'"),
    ],
)
def test_cli_config_errors_are_one_line_exit_2_no_traceback(alightning, cli_env, tmp_path, args, expected):
    result = _cli(alightning, cli_env, tmp_path, *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    if isinstance(expected, re.Pattern):
        match = expected.fullmatch(lines[0])
        assert match, lines[0]
        known = match["known"].split(", ")
        assert BUILT_IN_ENVIRONMENTS <= set(known) and known == sorted(known), lines[0]
    else:
        assert lines[0].startswith(expected), lines[0]
    assert "Traceback" not in result.stderr


def test_cli_malformed_yaml_file(alightning, cli_env, tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("trainer:\n  steps: [1, 2\n")
    result = _cli(alightning, cli_env, tmp_path, str(bad))
    assert result.returncode == 2 and "malformed YAML" in result.stderr and "Traceback" not in result.stderr


def test_cli_lists_every_problem_unknown_before_missing(alightning, cli_env, tmp_path):
    config = tmp_path / "typo.yaml"
    config.write_text("trainer: {stepz: 3}\n")
    result = _cli(alightning, cli_env, tmp_path, str(config))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "error: 2 problems in the config:", result.stderr
    unknown = next(i for i, line in enumerate(lines) if "unknown key 'trainer.stepz'" in line)
    missing = next(i for i, line in enumerate(lines) if "missing key 'environment'" in line)
    assert "did you mean 'steps'?" in lines[unknown]
    assert unknown < missing and len(lines) == 3


def _problems(data):
    with pytest.raises(ConfigError) as err:
        validate(data)
    return str(err.value).splitlines()


def test_validate_lists_unknown_then_invalid_then_missing_in_declaration_order():
    lines = _problems({"trainer": {"steps": "many", "stepz": 3}, "sampling": {"top_p": 1.5},
                       "backend": {"device": "cpuu"}, "modle": {"preset": "tiny"}})
    assert lines[0] == "6 problems in the config:"
    assert [line[:2] for line in lines[1:]] == ["  "] * 6
    assert [line.strip() for line in lines[1:]] == [
        "unknown key 'trainer.stepz' (allowed: batch_size, checkpoint_errors, checkpoint_every, distributed, "
        "eval_episodes, eval_every, executor, keep_checkpoints, log_trajectories, max_failure_rate, "
        "max_skipped_updates, output_dir, replay, seed, step_timeout_s, steps, time_limit_s); did you mean 'steps'?",
        "unknown key 'modle' (allowed: agent, algorithm, backend, environment, model, reward, sampling, trackers, trainer); "
        "did you mean 'model'?",
        "invalid value 'cpuu' for 'backend.device': Input should be 'auto', 'cpu' or 'cuda'; did you mean 'cpu'?",
        "invalid value 1.5 for 'sampling.top_p': Input should be less than or equal to 1",
        "invalid value 'many' for 'trainer.steps': Input should be a valid integer, unable to parse string as an integer",
        "missing key 'environment' (a section with at least 'name:', e.g. environment: {name: guess-number})",
    ]


def test_validate_literal_value_suggests_the_closest_allowed_value():
    with pytest.raises(ConfigError) as err:
        validate({"environment": {"name": "guess-number"}, "trainer": {"distributed": {"strategy": "FSDP2"}}})
    assert str(err.value) == ("invalid value 'FSDP2' for 'trainer.distributed.strategy': "
                              "Input should be 'ddp' or 'fsdp'; did you mean 'fsdp'?")
    lines = _problems({"environment": {"name": "guess-number"}, "model": {"dtype": "bfloat"},
                       "trainer": {"executor": {"name": "rey"}}})
    assert lines[1:] == [
        "  invalid value 'bfloat' for 'model.dtype': Input should be 'float32', 'bfloat16', 'float16' or 'auto'; "
        "did you mean 'bfloat16'?",
        "  invalid value 'rey' for 'trainer.executor.name': Input should be 'inprocess' or 'ray'; did you mean 'ray'?",
    ]


def test_validate_missing_key_points_at_a_misspelt_key_beside_it():
    lines = _problems({"enviroment": {"name": "guess-number"}, "trackers": [{"nme": "console"}]})
    assert lines[0] == "3 problems in the config:"
    assert lines[1].startswith("  unknown key 'enviroment' (allowed: ") and lines[1].endswith("did you mean 'environment'?")
    assert lines[2] == ("  missing key 'environment' (a section with at least 'name:', e.g. environment: {name: guess-number}); "
                        "did you mean 'environment' instead of the unknown 'enviroment'?")
    assert lines[3] == ("  missing key 'trackers.0.name' (which tracker to use, e.g. name: console); "
                        "did you mean 'name' instead of the unknown 'nme'?")


def test_validate_reports_a_union_field_once():
    lines = _problems({"environment": {"name": "guess-number"}, "model": {"lora": {"target_modules": 3, "r": 0}}})
    assert lines[1:] == [
        "  invalid value 0 for 'model.lora.r': Input should be greater than or equal to 1",
        "  invalid value 3 for 'model.lora.target_modules': Input should be a valid list or a valid string",
    ]


def test_parse_options_lists_every_unknown_key_with_did_you_mean():
    from agent_lightning.algorithms.grpo import GRPOConfig

    with pytest.raises(ConfigError) as err:
        parse_options(GRPOConfig, "algorithm", {"clip_lo": 0.1, "group_sise": 4, "lr": "fast"})
    lines = str(err.value).splitlines()
    assert lines[0] == "3 problems in 'algorithm':"
    assert lines[1].startswith("  unknown key 'algorithm.clip_lo' (allowed: ") and lines[1].endswith("did you mean 'clip_low'?")
    assert lines[2].startswith("  unknown key 'algorithm.group_sise' (allowed: ") and lines[2].endswith("did you mean 'group_size'?")
    assert lines[3] == "  invalid value 'fast' for 'algorithm.lr': Input should be a valid number, unable to parse string as a number"
    with pytest.raises(ConfigError) as one:
        parse_options(GRPOConfig, "algorithm", {"group_size": "zero"})
    assert str(one.value).startswith("invalid value 'zero' for 'algorithm.group_size': ") and "\n" not in str(one.value)


def test_resolved_config_is_written_to_the_run_directory(tiny_config, tmp_path):
    from agent_lightning.loop.trainer import Trainer

    config = tiny_config(trainer={"steps": 1, "eval_episodes": 4})
    Trainer(config, tmp_path / "run").run()
    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert validate(written) == config
    assert written["environment"] == {"name": "guess-number", "max_number": 6, "max_turns": 3}


def test_component_section_requires_a_name(tiny_config_dict):
    with pytest.raises(ConfigError, match="missing key 'environment.name'"):
        validate({**tiny_config_dict(), "environment": {"max_number": 3}})


def test_resume_rejects_a_second_config(alightning, cli_env, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("environment: {name: guess-number}\n")
    result = subprocess.run([*alightning, "run", "other.yaml", "--resume", str(run_dir)],
                            capture_output=True, text=True, env=cli_env, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (f"error: --resume {run_dir} continues with that run's own config.yaml; "
                                      "drop 'other.yaml' (key=value overrides are allowed)")
