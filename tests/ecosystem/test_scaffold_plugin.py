"""``create_plugin`` (``alightning new-plugin``): every kind renders a working plugin; two
are pip-installed into this interpreter's environment, listed by ``alightning plugins``,
and pass their own generated tests untouched."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from agent_lightning.cli.scaffold import KINDS, create_plugin, module_name

INSTALLED = {"kitdemo": "env", "kitdemo-reward": "reward"}


def _load(root, name):
    module = module_name(name)
    spec = importlib.util.spec_from_file_location(f"scaffolded_{module}", root / module / "__init__.py")
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_renders_a_registering_plugin(kind, tmp_path, al_plugin_manager):
    name = f"my-{kind}"
    root = create_plugin(name, kind, tmp_path)
    assert root == tmp_path / f"agent-lightning-{name}"
    module = module_name(name)
    assert module == f"agent_lightning_my_{kind}"
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == sorted(
        ["pyproject.toml", "README.md", f"{module}/__init__.py", f"tests/test_{module}.py"])
    project = tomllib.loads((root / "pyproject.toml").read_text())
    assert project["project"]["name"] == f"agent-lightning-{name}"
    assert project["project"]["version"] == "0.1.0"
    assert project["project"]["dependencies"] == ["agent-lightning"]
    assert project["project"]["entry-points"]["agent_lightning"] == {name: module}
    readme = (root / "README.md").read_text()
    assert f"agent-lightning-{name}" in readme and "$" not in readme.replace("${", "")
    compile((root / "tests" / f"test_{module}.py").read_text(), "test", "exec")

    pm = al_plugin_manager(_load(root, name))
    registry = pm.registries["environment" if kind == "env" else kind]
    assert [entry.name for entry in registry] == [name]
    assert registry.get(name).description


@pytest.mark.parametrize("bad", ["Demo", "1demo", "my_env", "", "a--b", "-a", "demo-", "de mo", "dé"])
def test_invalid_names_are_rejected_naming_the_culprit(bad, tmp_path):
    with pytest.raises(ValueError, match=f"invalid plugin name {bad!r}"):
        create_plugin(bad, "env", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_invalid_kind_and_existing_destination_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="invalid plugin kind 'model'.*env, reward, tracker, algorithm, backend"):
        create_plugin("demo", "model", tmp_path)
    root = create_plugin("demo", "environment", tmp_path)
    before = (root / "README.md").read_text()
    with pytest.raises(ValueError, match=f"destination {root} already exists"):
        create_plugin("demo", "reward", tmp_path)
    assert (root / "README.md").read_text() == before


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    dest = tmp_path_factory.mktemp("scaffolded")
    roots = {name: create_plugin(name, kind, dest) for name, kind in INSTALLED.items()}
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "install", "-q", "--no-deps", "--no-build-isolation", *map(str, roots.values())],
                   check=True, timeout=300, capture_output=True)
    yield dest, roots
    subprocess.run([*pip, "uninstall", "-y", "-q", *(f"agent-lightning-{n}" for n in INSTALLED)],
                   check=True, timeout=120, capture_output=True)


def test_installed_plugins_are_listed_by_alightning_plugins(installed, cli_env, alightning):
    out = subprocess.run([*alightning, "plugins"], capture_output=True, text=True, env=cli_env, timeout=120,
                         check=True).stdout
    for name, kind in INSTALLED.items():
        rows = [line for line in out.splitlines() if f" {name} " in f" {line} " and f"agent-lightning-{name}" in line]
        assert any(("environment" if kind == "env" else kind) in r and "0.1.0" in r for r in rows), out


@pytest.mark.parametrize("name", sorted(INSTALLED))
def test_generated_tests_pass_untouched(installed, name, cli_env):
    dest, roots = installed
    # run from outside the distribution so the tests import the installed copy
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(roots[name])],
                            capture_output=True, text=True, timeout=300, cwd=dest, env=cli_env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout
