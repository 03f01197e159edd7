"""``alightning``: the command line.

    alightning run [CONFIG|PRESET] [a.b=value ...] [--output-dir DIR] [--resume RUN_DIR] [--nproc N]
    alightning plugins
    alightning envs
    alightning new-plugin NAME [--kind env|reward|tracker|algorithm|backend] [--dest DIR]
    alightning try ENV [key=value ...] [--split eval] [--task ID] [--seed N]
    alightning train-reward-model DATA.jsonl --output-dir DIR [model.key=value ...] [--epochs N] [--lr X]
    alightning eval RUN_DIR|CHECKPOINT [--env NAME] [--split eval|train] [--samples K] [--episodes N] [--json PATH]
    alightning report RUN_DIR          /  alightning show RUN_DIR [--step N]
    alightning try-agent [CONFIG|PRESET] [key=value ...] [--episodes N]   (an agent against the base policy)
    alightning serve RUN_DIR|CHECKPOINT|CONFIG|PRESET [--port P] [--api-key KEY]   (the OpenAI API)
    alightning --quiet COMMAND ...     (no progress bars; they are also off when stdout/stderr is not a terminal)

Flags may come before, between or after the positionals, e.g. ``alightning run quickstart
--nproc 2 trainer.steps=3``. CONFIG|PRESET is the one positional without '=' (wherever it is);
ENV, RUN_DIR|CHECKPOINT and DATA.jsonl are the first positional of their command.

Configuration mistakes print one line (``error: ...``) and exit with code 2; a run
aborted for too many failed episodes exits with code 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from agent_lightning.cli.args import source_and_overrides

if TYPE_CHECKING:
    from agent_lightning.config import RunConfig
    from agent_lightning.loop.stopping import StopSignal


def _run(args: argparse.Namespace) -> int:
    """``alightning run``: SIGTERM/SIGINT stop it gracefully from the start (a signal during
    start-up stops the run right after the initial evaluation, with a step-0 checkpoint)."""
    from agent_lightning.loop import stopping

    with stopping.StopSignal(announce=os.environ.get("RANK", "0") == "0") as signals:
        return _start_run(args, signals)


def _start_run(args: argparse.Namespace, signals: "StopSignal") -> int:
    from agent_lightning.config import ConfigError, apply_overrides, load_config, read_yaml, validate

    source, overrides = source_and_overrides(args.config_and_overrides)
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"--resume {run_dir}: no config.yaml there; is it a run directory?")
        if source is not None:
            raise ConfigError(f"--resume {run_dir} continues with that run's own config.yaml; "
                              f"drop '{source}' (key=value overrides are allowed)")
        import os

        from agent_lightning.config import env_overrides

        data = apply_overrides(read_yaml(str(run_dir / "config.yaml")), env_overrides(os.environ))
        config = validate(apply_overrides(data, overrides))
    else:
        config = load_config(source, overrides)
        if args.output_dir:
            run_dir = Path(args.output_dir)
        else:
            stem = Path(source).stem if source else "quickstart"
            run_dir = Path(config.trainer.output_dir) / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    from agent_lightning.scaling import distributed

    if args.nproc:  # the config is valid: start the ranks (each re-runs this command without --nproc)
        return distributed.launch(args.nproc, _relaunch_args(args))
    distributed.init(config.trainer.distributed, device=config.backend.device)  # no-op outside torchrun
    run_dir = Path(distributed.broadcast_object(str(run_dir)))  # rank 0's timestamp
    say = print if distributed.is_main() else (lambda *a, **k: None)
    say(f"run directory: {run_dir}", flush=True)
    return _train(config, run_dir, resume=bool(args.resume), signals=signals, say=say)


def _train(config: "RunConfig", run_dir: Path, *, resume: bool, signals: "StopSignal", say: Callable[..., None]) -> int:
    """Build the trainer, run it, print the summary (or where to resume); the exit code."""
    from agent_lightning.loop import stopping
    from agent_lightning.loop.trainer import Trainer
    from agent_lightning.scaling import distributed

    started = time.perf_counter()
    trainer = Trainer(config, run_dir)
    info = trainer.describe()
    say(f"policy: {info.get('model/parameters', '?'):,} parameters ({info.get('model/trainable_parameters', '?'):,} trainable) "
          f"on {info.get('model/device', '?')}"
          + (f" ({info['model/autocast']} autocast)" if info.get("model/autocast", "off") != "off" else
             " (autocast auto: float32, this device has no native bfloat16 matmuls)"
             if config.backend.autocast == "auto" else "")
          + f"; training log-probs: {info['ops/token_logprobs']} "
          "(from hidden states, never [tokens x vocab] logits)", flush=True)
    result = trainer.run(resume=resume, signals=signals)
    if result.stopped_by:
        if result.checkpoint is not None:
            when = f"after step {result.steps} (checkpoint {result.checkpoint})"
        elif result.steps == 0:
            when = "before training began (nothing to save)"
        else:
            when = f"after step {result.steps} (its checkpoint could not be written)"
        say(f"stopped by {stopping.signal_name(result.stopped_by)} {when}; resume with: alightning run --resume {run_dir}",
            flush=True)
        distributed.shutdown()
        return stopping.exit_code(result.stopped_by)
    elapsed = time.perf_counter() - started
    first = result.first_eval.get("eval/success_rate")
    last = result.last_eval.get("eval/success_rate")
    summary = f"finished {result.steps} steps in {elapsed:.1f}s"
    if first is not None and last is not None:
        summary += f"; held-out success {first:.2f} -> {last:.2f}"
    elif last is not None:
        summary += f"; held-out success {last:.2f}"
    say(summary)
    say(f"run directory: {run_dir}", flush=True)
    distributed.shutdown()
    return 0


def _relaunch_args(args: argparse.Namespace) -> list[str]:
    """This ``run`` command's arguments without ``--nproc`` (what every rank runs)."""
    out = ["--log-level", str(args.log_level), *(["--quiet"] if getattr(args, "quiet", False) else []), "run"]
    out += list(args.config_and_overrides)
    out += ["--output-dir", args.output_dir] if args.output_dir else []
    out += ["--resume", args.resume] if args.resume else []
    return out


def _config_show(args: argparse.Namespace) -> int:
    import os

    import yaml

    from agent_lightning.config import explain, passthrough_environment

    source, overrides = source_and_overrides(args.config_and_overrides)
    rows = explain(source, overrides)
    width = max(len(f"{path}: {yaml.safe_dump(value, default_flow_style=True).strip()}") for path, value, _ in rows)
    for path, value, where in rows:
        text = f"{path}: {yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix(chr(10) + '...')}"
        print(f"{text:<{width}}  # {where}")
    passthrough = passthrough_environment(os.environ)
    if passthrough:
        print("# tracker environment (passed through; secrets masked):")
        for key, value in passthrough.items():
            print(f"#   {key}={value}")
    return 0


def _new_plugin(args: argparse.Namespace) -> int:
    from agent_lightning.cli.scaffold import create_plugin
    from agent_lightning.config import ConfigError

    try:
        folder = create_plugin(args.name, args.kind, args.dest)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    print(f"created {folder}")
    print(f"next: pip install {folder} && alightning plugins && (cd {folder} && pytest)")
    return 0


def _plugins(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from agent_lightning.plugins import get_plugin_manager

    pm = get_plugin_manager()
    table = Table(title="agent-lightning components")
    for column in ("kind", "name", "distribution", "version", "description"):
        table.add_column(column)
    for kind, registry in pm.registries.items():
        for entry in registry:
            table.add_row(kind, entry.name, entry.source.distribution, entry.source.version, entry.description)
    console = Console(width=max(120, Console().width))
    console.print(table)
    for failure in pm.failures:
        console.print(f"[red]error:[/red] {failure}", markup=True, highlight=False)
    return 0


def _envs(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from agent_lightning.cli.env_catalog import describe_environments

    table = Table(title="environments")
    for column in ("name", "description", "train tasks", "eval tasks"):
        table.add_column(column)
    for row in describe_environments():
        counts = (str(row.train), str(row.eval)) if row.error is None else ("error", row.error)
        table.add_row(row.name, row.description, *counts)
    Console(width=max(120, Console().width)).print(table)
    return 0


def _try(args: argparse.Namespace) -> int:
    from agent_lightning.cli.env_catalog import pick_task, play_interactive
    from agent_lightning.config import ConfigError, apply_overrides
    from agent_lightning.plugins import get_plugin_manager
    from agent_lightning.plugins import create_component

    options = apply_overrides({}, [f"environment.{item}" for item in args.options]).get("environment", {})
    env = create_component(get_plugin_manager(), "environment", "environment", args.env, **options)
    try:
        try:
            task = pick_task(env, split=args.split, task_id=args.task, seed=args.seed)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        play_interactive(env, task)
    finally:
        env.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``alightning`` parser; parse with ``agent_lightning.cli.args.parse_args`` (flags and
    positionals in any order)."""
    from agent_lightning import __version__
    from agent_lightning.cli.args import rest_positional

    parser = argparse.ArgumentParser(prog="alightning", description="Train LLM agents with reinforcement learning.")
    parser.add_argument("--version", action="version", version=f"agent-lightning {__version__}")
    parser.add_argument("--log-level", default=os.environ.get("ALIGHTNING_LOG_LEVEL", "WARNING"),
                        help="Python logging level (default: $ALIGHTNING_LOG_LEVEL or WARNING)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    quiet = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: the flag may also come before the command (alightning --quiet run ...).
    quiet.add_argument("--quiet", "-q", action="store_true", default=argparse.SUPPRESS, help="no progress bars")
    run = sub.add_parser("run", parents=[quiet], help="train (with no config: the packaged quickstart)")
    run.add_argument("config_and_overrides", nargs="*", metavar="[CONFIG|PRESET] [key.path=value ...]")
    run.add_argument("--output-dir", help="the run directory (default: <trainer.output_dir>/<name>-<time>)")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest checkpoint")
    run.add_argument("--nproc", type=int, metavar="N",
                     help="data-parallel training in N processes on this machine (starts torchrun --standalone)")
    run.set_defaults(handler=_run)
    rest_positional(run, "config_and_overrides")

    plugins = sub.add_parser("plugins", help="list every registered component and where it came from")
    plugins.set_defaults(handler=_plugins)

    config = sub.add_parser("config", help="inspect configuration")
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = config_sub.add_parser("show", help="the fully resolved config and where each value came from")
    show.add_argument("config_and_overrides", nargs="*", metavar="[CONFIG|PRESET] [key.path=value ...]")
    show.set_defaults(handler=_config_show)
    rest_positional(show, "config_and_overrides")

    new = sub.add_parser("new-plugin", help="scaffold an agent-lightning-NAME plugin distribution")
    new.add_argument("name", help="plugin name: lowercase letters, digits and '-'")
    new.add_argument("--kind", default="env", help="env | reward | tracker | algorithm | backend (default: env)")
    new.add_argument("--dest", default=".", help="parent folder (default: the current one)")
    new.set_defaults(handler=_new_plugin)

    envs = sub.add_parser("envs", help="list environments with a description and their task counts")
    envs.set_defaults(handler=_envs)

    try_env = sub.add_parser("try", help="play one episode of an environment yourself, in the terminal")
    try_env.add_argument("env", help="environment name (see 'alightning envs')")
    try_env.add_argument("options", nargs="*", metavar="key=value", help="environment options")
    try_env.add_argument("--split", default="eval")
    try_env.add_argument("--task", help="task id (default: a random task of the split)")
    try_env.add_argument("--seed", type=int, default=None)
    try_env.set_defaults(handler=_try)
    rest_positional(try_env, "options")
    from agent_lightning.cli.eval_commands import add_commands

    add_commands(sub)  # eval, report, show
    from agent_lightning.cli.agent_commands import add_commands as add_agent_commands

    add_agent_commands(sub)  # try-agent, serve
    from agent_lightning.preferences.reward_model import add_command as add_reward_model_command

    add_reward_model_command(sub)  # train-reward-model
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from agent_lightning.cli.args import parse_args
    from agent_lightning.config import ConfigError

    parser = build_parser()
    args = parse_args(parser, argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 2
    from agent_lightning import progress

    progress.configure(quiet=args.quiet)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from agent_lightning.loop.trainer import TrainingAborted

        if isinstance(exc, TrainingAborted):
            print(f"error: run aborted: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
