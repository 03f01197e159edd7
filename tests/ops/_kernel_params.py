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
