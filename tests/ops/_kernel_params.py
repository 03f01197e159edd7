"""Implementation/device combinations the kernel tests run on (imported by tests/ops/test_*.py).

* ``torch`` on CPU always, and on CUDA when present;
* ``triton`` on CUDA when present, else on CPU under ``TRITON_INTERPRET=1`` (see conftest.py).
"""

import importlib.util
import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
HAS_TRITON = importlib.util.find_spec("triton") is not None


def impl_params(triton: bool = True) -> list:
    """``pytest.param((impl, device))`` for every combination this machine can run."""
    params = [pytest.param(("torch", "cpu"), id="torch-cpu")]
    if HAS_CUDA:
        params.append(pytest.param(("torch", "cuda"), id="torch-cuda"))
    if triton:
        if HAS_CUDA:
            params.append(pytest.param(("triton", "cuda"), id="triton-cuda"))
        else:
            interpreted = os.environ.get("TRITON_INTERPRET") == "1"
            params.append(
                pytest.param(
                    ("triton", "cpu"),
                    id="triton-interpret",
                    marks=pytest.mark.skipif(
                        not (HAS_TRITON and interpreted), reason="triton not installed / not interpreted"
                    ),
                )
            )
    return params


def compile_kernels_for_cuda(*names: str) -> None:
    """Compile the named kernels for sm_90 in a fresh process without ``TRITON_INTERPRET``
    (see ``_compile_kernels.py``); fails the test on a compile error, skips it when this
    Triton cannot target CUDA on this machine."""
    import subprocess
    import sys

    if not HAS_TRITON:
        pytest.skip("triton not installed")
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_compile_kernels.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, script, *names], capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode == 3:
        pytest.skip(proc.stdout.strip() or proc.stderr.strip()[-500:])
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
