"""Compile every CUDA source under csrc/ with nvcc (compile only), so the kernels cannot rot
on machines without a GPU. Skipped when nvcc is not on PATH."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[2] / "csrc"
CU_FILES = sorted(CSRC.rglob("*.cu"))
NVCC = shutil.which("nvcc")

pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")


def nvcc_compile(src: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [NVCC, "-c", "-arch=sm_90", "-O2", "-std=c++17", f"-I{CSRC}", str(src), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_there_are_cuda_sources():
    assert CU_FILES, f"no .cu files under {CSRC}"


@pytest.mark.parametrize("src", CU_FILES, ids=[str(p.relative_to(CSRC)) for p in CU_FILES])
def test_cu_compiles_for_sm90(src, tmp_path):
    result = nvcc_compile(src, tmp_path / (src.stem + ".o"))
    assert result.returncode == 0, f"nvcc failed on {src}:\n{result.stderr[-4000:]}"
    assert (tmp_path / (src.stem + ".o")).stat().st_size > 0


def test_a_broken_kernel_fails_to_compile(tmp_path):
    """The check itself can fail: a kernel with a type error must be rejected."""
    bad = tmp_path / "bad.cu"
    bad.write_text('#include "cuda/kernels.h"\n__global__ void k(float* x) { x[0] = al_cuda::no_such; }\n')
    result = nvcc_compile(bad, tmp_path / "bad.o")
    assert result.returncode != 0
