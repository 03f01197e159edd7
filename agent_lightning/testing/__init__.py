"""Testing kit for plugin authors: a pytest plugin and a conformance suite.

The pytest plugin (``agent_lightning.testing.plugin``, entry point ``pytest11``) is active
in every pytest run once agent-lightning is installed and gives two fixtures:

* ``al_plugin_manager(plugin, ...)`` — a plugin manager holding only the given plugin
  modules or objects (no built-ins, no installed entry points), in strict mode;
* ``al_tiny_policy`` — a tiny random-init transformers backend on the CPU.

The conformance suite (``check_environment``, ``check_reward``) asserts the plugin
contract; see ``agent_lightning.testing.conformance``.
"""

from agent_lightning.testing.conformance import (
    DEFAULT_ACTIONS,
    ConformanceError,
    check_environment,
    check_reward,
)

__all__ = ["DEFAULT_ACTIONS", "ConformanceError", "check_environment", "check_reward"]
