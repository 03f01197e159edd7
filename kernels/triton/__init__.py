"""Triton kernels, installed as ``agent_lightning.kernels``.

Every kernel here has a pure-torch reference in ``agent_lightning.ops``; callers go
through ``agent_lightning.ops``, never through this package directly. The package lives in
``kernels/triton/`` rather than in ``kernels/`` itself so that the repository root never
holds an importable ``kernels`` package (see ``kernels/README.md``).
"""
