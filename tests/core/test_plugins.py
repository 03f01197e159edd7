"""Plugin discovery: built-ins, entry points, duplicates, failures, blocking."""

from __future__ import annotations

import sys
import textwrap

import pytest

from agent_lightning.hookspecs import hookimpl
from agent_lightning.plugins import PluginError, build_plugin_manager
from agent_lightning.registry import RegistryError


class EnvPlugin:
    @hookimpl
    def register_environments(self, register):
        register("guess-number", object)


class FriendlyPlugin:
    @hookimpl
    def register_rewards(self, register):
        register("always-one", lambda: (lambda traj: 1.0))


class RaisingPlugin:
    @hookimpl
    def register_rewards(self, register):
        raise RuntimeError("database unreachable")


class MisspelledPlugin:
    @hookimpl
    def register_enviroments(self, register):  # the typo is the point
        register("never", object)


def test_builtins_are_registered_through_the_hooks():
    pm = build_plugin_manager(autoload=False)
    assert "guess-number" in pm.environments
    assert "grpo" in pm.algorithms
    assert {"console", "jsonl"} <= set(pm.trackers.names())
    assert pm.backends.get("transformers").source.plugin == "agent_lightning.backends.transformers.backend"
    assert pm.failures == []


def test_duplicate_name_names_both_sources():
    with pytest.raises(PluginError) as err:
        build_plugin_manager(autoload=False, extra_plugins=[("dupe", EnvPlugin())], strict=True)
    message = str(err.value)
    assert "environment 'guess-number' is registered twice" in message
    assert "agent_lightning.envs.guess_number" in message and "plugin 'dupe'" in message


def test_duplicate_is_reported_and_first_registration_kept_when_not_strict():
    with pytest.warns(UserWarning, match="registered twice"):
        pm = build_plugin_manager(autoload=False, extra_plugins=[("dupe", EnvPlugin())])
    assert pm.environments.get("guess-number").source.plugin == "agent_lightning.envs.guess_number"
    assert len(pm.failures) == 1


def test_unknown_name_lists_known_and_suggests():
    pm = build_plugin_manager(autoload=False)
    with pytest.raises(RegistryError) as err:
        pm.environments.get("guess-numbr")
    assert "unknown environment 'guess-numbr'" in str(err.value)
    assert "did you mean 'guess-number'?" in str(err.value)
    assert "(known: api, code, guess-number, tool-use, web)" in str(err.value)


def test_plugin_raising_in_hook_is_reported_and_others_survive():
    with pytest.warns(UserWarning, match="database unreachable"):
        pm = build_plugin_manager(autoload=False, extra_plugins=[("bad", RaisingPlugin()), ("good", FriendlyPlugin())])
    assert "always-one" in pm.rewards
    assert [f.source.plugin for f in pm.failures] == ["bad"]
    assert "register_rewards raised RuntimeError: database unreachable" in str(pm.failures[0])


def test_misspelled_hook_is_an_error():
    with pytest.raises(PluginError, match=r"unknown hook 'register_enviroments' \(did you mean 'register_environments'\?\)"):
        build_plugin_manager(autoload=False, extra_plugins=[("typo", MisspelledPlugin())], strict=True)


def test_block_list_from_argument_and_environment(monkeypatch):
    pm = build_plugin_manager(autoload=False, blocked=["agent_lightning.envs.guess_number"])
    assert "guess-number" not in pm.environments
    monkeypatch.setenv("ALIGHTNING_BLOCK_PLUGINS", "good, agent_lightning.rewards.env_rewards")
    pm = build_plugin_manager(autoload=False, extra_plugins=[("good", FriendlyPlugin())])
    assert "always-one" not in pm.rewards and "env-reward" not in pm.rewards


@pytest.fixture
def fake_distribution(tmp_path, monkeypatch):
    """Installs fake distributions on sys.path: one working plugin, one broken at import."""
    site = tmp_path / "site"
    (site / "al_fake_plugin").mkdir(parents=True)
    (site / "al_fake_plugin" / "__init__.py").write_text(textwrap.dedent("""
        from agent_lightning.hookspecs import hookimpl

        def make_reward():
            return lambda trajectory: 0.5

        @hookimpl
        def register_rewards(register):
            register("fake-reward", make_reward)
    """))
    (site / "al_broken_plugin.py").write_text("raise ImportError('missing dependency: leftpad')\n")
    for dist, version, entry in [("al-fake-plugin", "1.2.3", "fake = al_fake_plugin"),
                                 ("al-broken-plugin", "0.0.1", "broken = al_broken_plugin")]:
        info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[agent_lightning]\n{entry}\n")
    monkeypatch.syspath_prepend(str(site))
    yield site
    sys.modules.pop("al_fake_plugin", None)


def test_entry_point_plugins_are_discovered_and_failures_name_the_distribution(fake_distribution):
    with pytest.warns(UserWarning, match="al-broken-plugin"):
        pm = build_plugin_manager()
    entry = pm.rewards.get("fake-reward")
    assert (entry.source.distribution, entry.source.version) == ("al-fake-plugin", "1.2.3")
    assert pm.rewards.create("fake-reward")(None) == 0.5
    broken = [f for f in pm.failures if f.source.distribution == "al-broken-plugin"]
    assert len(broken) == 1
    text = str(broken[0])
    assert "0.0.1" in text and "entry point 'al_broken_plugin'" in text and "missing dependency: leftpad" in text


def test_autoload_can_be_disabled(fake_distribution, monkeypatch):
    monkeypatch.setenv("ALIGHTNING_DISABLE_PLUGIN_AUTOLOAD", "1")
    pm = build_plugin_manager()
    assert "fake-reward" not in pm.rewards and pm.failures == []


def test_unknown_option_is_rejected_with_allowed_keys():
    pm = build_plugin_manager(autoload=False)
    with pytest.raises(RegistryError, match=r"unknown key 'environment.max_nmber'.*allowed: eval_repeats, max_number, max_turns.*did you mean 'max_number'"):
        pm.environments.create("guess-number", max_nmber=3)
