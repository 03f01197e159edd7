"""Kernel tests: interpret Triton on CPU when there is no GPU.

``TRITON_INTERPRET`` is read when ``@triton.jit`` decorates a kernel, so it must be set
before ``agent_lightning.kernels`` is first imported; conftest runs before the test modules.
With a GPU present the variable is left alone and the same tests run the compiled kernels.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
