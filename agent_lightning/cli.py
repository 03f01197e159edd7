"""``alightning``: the command line.

    alightning run [CONFIG|PRESET] [a.b=value ...] [--output-dir DIR] [--resume RUN_DIR]
    alightning plugins

Configuration mistakes print one line (``error: ...``) and exit with code 2; a run
aborted for too many failed episodes exits with code 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Sequence


def _run(args: argparse.Namespace) -> int:
    from agent_lightning.config import apply_overrides, load_config, read_yaml, validate
    from agent_lightning.trainer import Trainer

    positional = list(args.config_and_overrides)
    source = None
    if positional and "=" not in positional[0]:
        source = positional.pop(0)
    overrides = positional
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            from agent_lightning.config import ConfigError

            raise ConfigError(f"--resume {run_dir}: no config.yaml there; is it a run directory?")
        if source is not None:
            overrides.insert(0, source) if "=" in source else None
        config = validate(apply_overrides(read_yaml(str(run_dir / "config.yaml")), overrides))
    else:
        config = load_config(source, overrides)
        if args.output_dir:
            run_dir = Path(args.output_dir)
        else:
            stem = Path(source).stem if source else "quickstart"
            run_dir = Path(config.trainer.output_dir) / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"run directory: {run_dir}", flush=True)
    started = time.perf_counter()
    result = Trainer(config, run_dir).run(resume=bool(args.resume))
    elapsed = time.perf_counter() - started
    first = result.first_eval.get("eval/success_rate")
    last = result.last_eval.get("eval/success_rate")
    summary = f"finished {result.steps} steps in {elapsed:.1f}s"
    if first is not None and last is not None:
        summary += f"; held-out success {first:.2f} -> {last:.2f}"
    elif last is not None:
        summary += f"; held-out success {last:.2f}"
    print(summary)
    print(f"run directory: {run_dir}", flush=True)
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


def build_parser() -> argparse.ArgumentParser:
    from agent_lightning import __version__

    parser = argparse.ArgumentParser(prog="alightning", description="Train LLM agents with reinforcement learning.")
    parser.add_argument("--version", action="version", version=f"agent-lightning {__version__}")
    parser.add_argument("--log-level", default="WARNING", help="Python logging level (default: WARNING)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="train (with no config: the packaged quickstart)")
    run.add_argument("config_and_overrides", nargs="*", metavar="[CONFIG|PRESET] [key.path=value ...]")
    run.add_argument("--output-dir", help="the run directory (default: <trainer.output_dir>/<name>-<time>)")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest checkpoint")
    run.set_defaults(handler=_run)

    plugins = sub.add_parser("plugins", help="list every registered component and where it came from")
    plugins.set_defaults(handler=_plugins)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from agent_lightning.config import ConfigError

    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 2
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
        from agent_lightning.trainer import TrainingAborted

        if isinstance(exc, TrainingAborted):
            print(f"error: run aborted: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
