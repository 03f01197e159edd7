"""The ``alightning`` command line (``alightning`` and ``python -m agent_lightning.cli`` run
:func:`agent_lightning.cli.main.main`).

* ``main`` — the parser, ``run`` and the small commands; ``args`` — flags and overrides in any
  order; ``eval_commands`` — ``eval``, ``report``, ``show``; ``scaffold`` — ``new-plugin``;
  ``env_catalog`` — ``envs`` and ``try``.
"""
