"""Build script: packages (with ``kernels/`` installed as ``agent_lightning.kernels``)
and the optional C++/CUDA extension ``agent_lightning._C`` from ``csrc/``.

The extension is built against the torch that is already installed, so install with
``pip install --no-build-isolation``; ``ALIGHTNING_BUILD_EXT=0`` skips it, and a machine
without a compiler or without torch still installs (pure-torch fallback).
"""

from setuptools import find_packages, setup

packages = find_packages(include=["agent_lightning", "agent_lightning.*"])
packages.append("agent_lightning.kernels")

setup(
    packages=packages,
    package_dir={"agent_lightning.kernels": "kernels"},
)
