"""Command-line parsing: flags and key=value positionals in any order, for every subcommand."""

from __future__ import annotations

import json
import subprocess

import pytest

from agent_lightning.cli.args import parse_args
from agent_lightning.cli.args import source_and_overrides as _source_and_overrides
from agent_lightning.cli.main import _relaunch_args, build_parser, main
from agent_lightning.config import ConfigError


def parse(*argv: str):
    return parse_args(build_parser(), list(argv))


@pytest.mark.parametrize("argv", [
    ["run", "quickstart", "trainer.steps=3", "--nproc", "2", "--output-dir", "X"],   # flags after
    ["run", "--nproc", "2", "--output-dir", "X", "quickstart", "trainer.steps=3"],   # flags before
    ["run", "quickstart", "--nproc", "2", "trainer.steps=3", "--output-dir", "X"],   # flags between
    ["run", "quickstart", "--output-dir", "X", "--nproc", "2", "trainer.steps=3"],
])
def test_run_any_order(argv):
    args = parse(*argv)
    assert (args.command, args.config_and_overrides, args.nproc, args.output_dir, args.resume) == \
        ("run", ["quickstart", "trainer.steps=3"], 2, "X", None)


def test_run_keeps_the_order_of_positionals_split_by_flags():
    args = parse("run", "a=1", "--nproc", "2", "b=2", "--output-dir", "X", "quickstart", "--resume", "R", "c=3")
    assert args.config_and_overrides == ["a=1", "b=2", "quickstart", "c=3"]
    assert (args.nproc, args.output_dir, args.resume) == (2, "X", "R")
    assert not hasattr(args, "_rest")


@pytest.mark.parametrize("argv", [
    ["run", "a=1", "--nproc", "2", "quickstart", "--output-dir", "X", "b=2", "--resume", "R"],
    ["--log-level", "INFO", "--quiet", "run", "--nproc", "3", "a=1"],
    ["run", "--nproc", "2"],
])
def test_relaunch_args_parse_to_the_same_command(argv):
    args = parse(*argv)
    again = parse(*_relaunch_args(args))
    assert again.nproc is None
    assert {k: v for k, v in vars(again).items() if k != "nproc"} == {k: v for k, v in vars(args).items() if k != "nproc"}


@pytest.mark.parametrize("positional, expected", [
    ([], (None, [])),
    (["a=1", "b=2"], (None, ["a=1", "b=2"])),
    (["my.yaml", "a=1"], ("my.yaml", ["a=1"])),
    (["a=1", "my.yaml", "b=2"], ("my.yaml", ["a=1", "b=2"])),  # the one without '=', wherever it is
    (["a=1", "b=2", "quickstart"], ("quickstart", ["a=1", "b=2"])),
])
def test_source_is_the_one_positional_without_equals(positional, expected):
    assert _source_and_overrides(positional) == expected


def test_two_configs_are_an_error():
    with pytest.raises(ConfigError, match=r"^two configs given: 'a.yaml' and 'b.yaml'; pass one config and key=value overrides$"):
        _source_and_overrides(["a.yaml", "x=1", "b.yaml"])


@pytest.mark.parametrize("argv", [
    ["run", "a.yaml", "trainer.steps=1", "--output-dir", "X", "b.yaml"],
    ["config", "show", "a.yaml", "trainer.steps=1", "b.yaml"],
])
def test_two_configs_exit_2_with_one_line(argv, capsys):
    assert main(argv) == 2
    assert capsys.readouterr().err == "error: two configs given: 'a.yaml' and 'b.yaml'; pass one config and key=value overrides\n"


@pytest.mark.parametrize("argv", [
    ["config", "show", "quickstart", "trainer.steps=3"],
    ["config", "show", "trainer.steps=3", "quickstart"],
    ["--quiet", "config", "show", "quickstart", "trainer.steps=3"],
])
def test_config_show_any_order(argv):
    args = parse(*argv)
    assert (args.command, args.config_command) == ("config", "show")
    assert _source_and_overrides(args.config_and_overrides) == ("quickstart", ["trainer.steps=3"])


def test_config_show_uses_the_source_wherever_it_is(capsys):
    assert main(["config", "show", "trainer.steps=3", "quickstart"]) == 0
    out = capsys.readouterr().out
    assert any(line.startswith("trainer.steps: 3 ") and line.endswith("# command line") for line in out.splitlines())


@pytest.mark.parametrize("argv", [
    ["try", "guess-number", "--seed", "3", "max_number=5", "--split", "train", "max_turns=2"],
    ["try", "--seed", "3", "--split", "train", "guess-number", "max_number=5", "max_turns=2"],
    ["try", "guess-number", "max_number=5", "max_turns=2", "--seed", "3", "--split", "train"],
    ["try", "guess-number", "max_number=5", "--seed", "3", "max_turns=2", "--split", "train"],
])
def test_try_any_order(argv):
    args = parse(*argv)
    assert (args.command, args.env, args.options, args.seed, args.split, args.task) == \
        ("try", "guess-number", ["max_number=5", "max_turns=2"], 3, "train", None)


@pytest.mark.parametrize("argv", [
    ["eval", "RUN", "--episodes", "4", "sampling.eval_temperature=0"],
    ["eval", "--episodes", "4", "RUN", "sampling.eval_temperature=0"],
    ["eval", "RUN", "sampling.eval_temperature=0", "--episodes", "4"],
    ["eval", "--episodes", "4", "RUN", "sampling.eval_temperature=0", "--quiet"],
])
def test_eval_any_order(argv):
    args = parse(*argv)
    assert (args.command, args.target, args.overrides, args.episodes, args.samples) == \
        ("eval", "RUN", ["sampling.eval_temperature=0"], 4, 1)


def test_eval_keeps_the_order_of_overrides_split_by_flags():
    args = parse("eval", "RUN", "a.x=1", "--samples", "2", "b.y=2", "--no-trackers", "--json", "o.json", "c.z=3", "--env", "web")
    assert (args.target, args.overrides) == ("RUN", ["a.x=1", "b.y=2", "c.z=3"])
    assert (args.samples, args.no_trackers, args.json, args.env) == (2, True, "o.json", "web")


@pytest.mark.parametrize("argv", [
    ["train-reward-model", "data.jsonl", "model.preset=tiny", "model.lora.r=8", "--output-dir", "O", "--epochs", "2"],
    ["train-reward-model", "--output-dir", "O", "--epochs", "2", "data.jsonl", "model.preset=tiny", "model.lora.r=8"],
    ["train-reward-model", "data.jsonl", "--output-dir", "O", "model.preset=tiny", "--epochs", "2", "model.lora.r=8"],
])
def test_train_reward_model_any_order(argv):
    args = parse(*argv)
    assert (args.command, args.data, args.overrides, args.output_dir, args.epochs, args.lr) == \
        ("train-reward-model", "data.jsonl", ["model.preset=tiny", "model.lora.r=8"], "O", 2, None)


@pytest.mark.parametrize("argv, expected", [
    (["report", "RUN", "--trajectories", "2"], {"run_dir": "RUN", "trajectories": 2, "output_dir": None}),
    (["report", "--output-dir", "D", "RUN"], {"run_dir": "RUN", "trajectories": 3, "output_dir": "D"}),
    (["show", "--step", "3", "RUN", "--limit", "2"], {"run_dir": "RUN", "step": 3, "limit": 2}),
    (["new-plugin", "--kind", "reward", "foo", "--dest", "d"], {"name": "foo", "kind": "reward", "dest": "d"}),
    (["plugins"], {"command": "plugins"}),
    (["--quiet", "envs"], {"command": "envs", "quiet": True}),
])
def test_commands_with_fixed_positionals(argv, expected):
    args = vars(parse(*argv))
    assert {key: args[key] for key in expected} == expected


@pytest.mark.parametrize("argv, culprit", [
    (["run", "quickstart", "--bogus", "trainer.steps=1"], "--bogus"),
    (["run", "quickstart", "trainer.steps=1", "--nproc", "2", "--bogus=3"], "--bogus=3"),
    (["eval", "RUN", "--episodes", "4", "x=1", "--frobnicate"], "--frobnicate"),
    (["--bogus", "try", "guess-number"], "--bogus"),
    (["plugins", "extra"], "extra"),                 # a command without positionals
    (["report", "RUN", "--trajectories", "2", "more"], "more"),
    (["show", "RUN", "other"], "other"),
])
def test_unknown_arguments_exit_2_with_argparse_message(argv, culprit, capsys):
    with pytest.raises(SystemExit) as exc:
        parse(*argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: alightning")
    assert err.rstrip().endswith(f"alightning: error: unrecognized arguments: {culprit}")


def test_missing_required_positional_still_errors(capsys):
    with pytest.raises(SystemExit) as exc:
        parse("eval", "--episodes", "4")
    assert exc.value.code == 2
    assert "the following arguments are required: RUN_DIR|CHECKPOINT" in capsys.readouterr().err


def test_run_with_flags_between_overrides_through_the_cli(alightning, cli_env, tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run([*alightning, "run", "quickstart", "--output-dir", str(run_dir), "trainer.steps=1",
                             "trainer.eval_episodes=2", "trainer.batch_size=4", "algorithm.group_size=2",
                             "algorithm.minibatches=1", "trackers=[jsonl]"],
                            capture_output=True, text=True, env=cli_env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[0] == f"run directory: {run_dir}"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert max(r.get("step", 0) for r in records) == 1
