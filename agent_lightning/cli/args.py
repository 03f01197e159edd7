"""Flags and ``key=value`` positionals in any order, for a parser with subcommands.

argparse matches a ``nargs="*"`` positional as soon as it meets the first positional, so in
``alightning run quickstart --nproc 2 trainer.steps=3`` the list is closed before
``trainer.steps=3`` arrives and argparse rejects it ("unrecognized arguments").
``parse_intermixed_args`` would fix that but does not support subparsers. Instead, each
subcommand declares which positional list takes such leftovers (``rest_positional``), and
``parse_args`` puts them back there, in the order they were given.
"""

from __future__ import annotations

import argparse
from typing import Sequence

REST_DEST = "_rest"  # namespace attribute naming the subcommand's "rest" positional list


def rest_positional(parser: argparse.ArgumentParser, dest: str) -> None:
    """Declare ``dest`` (a ``nargs="*"`` positional of ``parser``) as the list that takes the
    positionals argparse leaves over when flags come between them."""
    if not any(action.dest == dest and not action.option_strings and action.nargs == "*" for action in parser._actions):
        raise ValueError(f"{parser.prog}: '{dest}' is not a nargs='*' positional of this parser")
    parser.set_defaults(**{REST_DEST: dest})


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``parser.parse_args(argv)``, except that positionals may come after, between or before
    flags: leftover positionals join the selected subcommand's rest list (after the ones argparse
    already put there, which came earlier on the command line). A leftover option, or a leftover
    for a subcommand without a rest list, exits 2 with argparse's usual message."""
    args, leftover = parser.parse_known_args(argv)
    dest = vars(args).pop(REST_DEST, None)
    if not leftover:
        return args
    unknown = [item for item in leftover if item.startswith("-")]
    if unknown or dest is None:
        parser.error(f"unrecognized arguments: {' '.join(unknown or leftover)}")
    setattr(args, dest, [*getattr(args, dest), *leftover])
    return args


def source_and_overrides(positional: Sequence[str]) -> tuple[str | None, list[str]]:
    """Split ``run`` / ``config show`` / ``try-agent`` / ``serve`` positionals into the config,
    preset or run directory (the one without '=', wherever it is; None when absent) and the
    key=value overrides, in their order."""
    from agent_lightning.config import ConfigError

    sources = [item for item in positional if "=" not in item]
    if len(sources) > 1:
        raise ConfigError(f"two configs given: '{sources[0]}' and '{sources[1]}'; pass one config and key=value overrides")
    return (sources[0] if sources else None), [item for item in positional if "=" in item]
