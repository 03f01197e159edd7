"""The ``eval``, ``report`` and ``show`` subcommands of ``alightning``.

    alightning eval RUN_DIR|CHECKPOINT [--env NAME] [--split eval|train] [--samples K]
                    [--episodes N] [--json PATH] [--no-trackers] [environment.x=v sampling.x=v ...]
    alightning report RUN_DIR [--output-dir DIR] [--trajectories N]
    alightning show RUN_DIR [--step N] [--limit N]
"""

from __future__ import annotations

import argparse
from typing import Any


def _console() -> Any:
    from rich.console import Console

    return Console(width=max(120, Console().width))


def _eval(args: argparse.Namespace) -> int:
    from agent_lightning.evaluation.harness import evaluate_run, gain_line, outcomes_table, results_table

    document = evaluate_run(args.target, env=args.env, split=args.split, samples=args.samples, episodes=args.episodes,
                            overrides=args.overrides, json_path=args.json, log_trackers=not args.no_trackers)
    console = _console()
    console.print(results_table(document))
    if any(r["outcomes"] for r in document["checkpoints"]):
        console.print(outcomes_table(document))
    line = gain_line(document)
    if line:
        console.print(line, highlight=False, markup=False)
    where = f"{document['run_dir']}/eval/results.json" + (f" and {args.json}" if args.json else "")
    console.print(f"results: {where}", highlight=False, markup=False)
    return 0


def _report(args: argparse.Namespace) -> int:
    from agent_lightning.evaluation.report import write_report

    files = write_report(args.run_dir, args.output_dir, trajectories=args.trajectories)
    written = [p for p in files.plots if p.path is not None]
    print(f"report: {files.html}")
    print(f"plots: {', '.join(p.path.name for p in written)} in {files.html.parent}")
    missing = [p.name for p in files.plots if p.path is None]
    if missing:
        print(f"not in this run (no data): {', '.join(missing)}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from agent_lightning.config import ConfigError
    from agent_lightning.evaluation.report.trajectories import show

    try:
        show(args.run_dir, args.step, args.limit, console=_console())
    except FileNotFoundError as exc:
        raise ConfigError(str(exc)) from None
    return 0


def add_commands(sub: Any) -> None:
    """Add ``eval``, ``report`` and ``show`` to the CLI's subparsers."""
    from agent_lightning.cli.args import rest_positional

    quiet = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: the flag may also come before the command (alightning --quiet eval ...).
    quiet.add_argument("--quiet", "-q", action="store_true", default=argparse.SUPPRESS,
                       help="no progress bars")

    ev = sub.add_parser("eval", parents=[quiet], help="evaluate the base model and every checkpoint of a run (or one checkpoint)")
    ev.add_argument("target", metavar="RUN_DIR|CHECKPOINT", help="a run directory or its checkpoints/step-N")
    ev.add_argument("overrides", nargs="*", metavar="key.path=value",
                    help="environment.*, reward.* or sampling.* changes (e.g. sampling.eval_temperature=0)")
    ev.add_argument("--env", help="evaluate on another registered environment (default: the run's)")
    ev.add_argument("--split", default="eval", help="eval (held out, default) or train")
    ev.add_argument("--samples", type=int, default=1, metavar="K", help="pass@K: every task is played at least K times")
    ev.add_argument("--episodes", type=int, default=None, metavar="N",
                    help="episodes per checkpoint, round-robin over the tasks (default: trainer.eval_episodes)")
    ev.add_argument("--json", metavar="PATH", help="also write the results here (always: RUN_DIR/eval/results.json)")
    ev.add_argument("--no-trackers", action="store_true", help="do not log ckpt_eval/... to the run's trackers")
    ev.set_defaults(handler=_eval)
    rest_positional(ev, "overrides")  # key=value overrides may also follow the flags

    rep = sub.add_parser("report", parents=[quiet], help="PNG plots and a one-page HTML summary of a run")
    rep.add_argument("run_dir", metavar="RUN_DIR")
    rep.add_argument("--output-dir", help="where to write (default: RUN_DIR/report)")
    rep.add_argument("--trajectories", type=int, default=3, metavar="N",
                     help="trajectories shown from the first and the last logged step (default 3)")
    rep.set_defaults(handler=_report)

    sh = sub.add_parser("show", parents=[quiet], help="print a step's sampled trajectories as conversations")
    sh.add_argument("run_dir", metavar="RUN_DIR")
    sh.add_argument("--step", type=int, default=None, help="the training step (default: the latest logged)")
    sh.add_argument("--limit", type=int, default=None, metavar="N", help="at most N trajectories")
    sh.set_defaults(handler=_show)
