"""Testing kit for plugin authors: a pytest plugin and a conformance suite.

The pytest plugin (``agent_lightning.testing.plugin``, entry point ``pytest11``) is active
in every pytest run once agent-lightning is installed and gives two fixtures:

* ``al_plugin_manager(plugin, ...)`` — a plugin manager holding only the given plugin
  modules or objects (no built-ins, no installed entry points), in strict mode;
* ``al_tiny_policy`` — a tiny random-init transformers backend on the CPU.

The conformance suite asserts the plugin contract: ``check_environment`` and
``check_reward`` (``agent_lightning.testing.conformance``), ``check_backend`` and
``check_algorithm`` against the Protocols of ``agent_lightning.types``
(``agent_lightning.testing.component_checks``).
"""

from agent_lightning.testing.component_checks import check_algorithm, check_backend
from agent_lightning.testing.conformance import (
    DEFAULT_ACTIONS,
    ConformanceError,
    check_environment,
    check_reward,
)

__all__ = ["DEFAULT_ACTIONS", "ConformanceError", "check_algorithm", "check_backend", "check_environment",
           "check_reward"]
