"""Build script: packages (with ``kernels/triton/`` installed as ``agent_lightning.kernels``)
and the optional C++/CUDA extension ``agent_lightning._C`` from ``csrc/``.

The extension is built against the torch that is already installed, so install with
``pip install --no-build-isolation``; ``ALIGHTNING_BUILD_EXT=0`` skips it, and a machine
without a compiler or without torch still installs (pure-torch fallback, one warning).

* C++ (``csrc/ops.cpp``) always, with OpenMP when the compiler accepts ``-fopenmp``.
* CUDA (``csrc/cuda/*.cu``) only when the installed torch was built with CUDA and ``nvcc``
  is found (``CUDA_HOME`` or ``PATH``); ``agent_lightning._C.cuda_enabled`` tells which.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from setuptools import find_namespace_packages, find_packages, setup

ROOT = Path(__file__).parent.resolve()
EXT_NAME = "agent_lightning._C"
WARN_PREFIX = "agent-lightning: "

packages = find_packages(include=["agent_lightning", "agent_lightning.*"])
# Data-only folders (scaffold templates) are packages too, so their files install.
packages += find_namespace_packages(include=["agent_lightning.scaffold_templates*"])
packages.append("agent_lightning.kernels")


BUILD_COMMANDS = {"build", "build_ext", "bdist_wheel", "editable_wheel", "develop", "install", "bdist_egg"}


def _warn_once(message: str) -> None:
    """The single warning of a build that falls back to pure torch.

    pip runs this script several times (requirements, metadata, build); only the run that
    builds says it, so the user sees the warning once.
    """
    if not BUILD_COMMANDS.intersection(sys.argv[1:]):
        return
    sys.stderr.write(f"\nWARNING: {WARN_PREFIX}{message}; installing without the C++ extension "
                     "(agent_lightning.ops uses the pure-torch reference).\n\n")


def _cxx() -> str | None:
    """The C++ compiler setuptools will use (``$CXX``, else Python's configured one), if found."""
    import shlex
    import sysconfig

    command = os.environ.get("CXX") or sysconfig.get_config_var("CXX") or "c++"
    parts = shlex.split(command)
    return shutil.which(parts[0]) if parts else None


def _compiler_accepts(flag: str) -> bool:
    """Whether the C++ compiler builds and links a trivial OpenMP program with ``flag``."""
    cxx = _cxx()
    if cxx is None:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "probe.cpp")
        src.write_text("#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n")
        result = subprocess.run(
            [cxx, flag, str(src), "-o", str(Path(tmp, "probe"))], capture_output=True, check=False
        )
        return result.returncode == 0


def _loaded_libstdcxx() -> str | None:
    """Path of the ``libstdc++.so.6`` this process loaded (with torch), from ``/proc/self/maps``."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1]
                if os.path.basename(path).startswith("libstdc++.so"):
                    return path
    except OSError:
        pass
    return None


def _shared_runtime_link_args() -> list[str]:
    """Extra link arguments that keep the extension on torch's shared C++ runtime.

    A compiler that has no shared libstdc++ of its own (``-print-file-name=libstdc++.so``
    finds none, as with a GCC built into ``/opt``) links a private copy of the C++ runtime
    into ``_C``. The process then holds two copies, and the one inside ``_C`` crashes
    (SIGSEGV) when it formats a number into an error message: its ``std::num_put`` facet
    ids are not registered in the locale that the other copy built. Naming the
    ``libstdc++.so.6`` that torch loaded makes the linker take the runtime from it.
    """
    cxx = _cxx()
    if cxx is None or not sys.platform.startswith("linux"):
        return []
    found = subprocess.run([cxx, "-print-file-name=libstdc++.so"], capture_output=True, text=True, check=False)
    if os.path.isabs(found.stdout.strip()) and os.path.exists(found.stdout.strip()):
        return []  # the compiler links libstdc++ dynamically already
    loaded = _loaded_libstdcxx()
    return [loaded] if loaded else []


def _extension_setup() -> dict:
    """``ext_modules`` / ``cmdclass`` for the extension, or nothing (after one warning)."""
    if os.environ.get("ALIGHTNING_BUILD_EXT", "1").strip() == "0":
        return {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except Exception as exc:  # torch missing, or broken
        _warn_once(f"torch is not importable at build time ({type(exc).__name__}: {exc}); "
                   "install torch first and use pip install --no-build-isolation")
        return {}

    if _cxx() is None:
        _warn_once("no C++ compiler found (set CXX or install g++/clang++)")
        return {}

    cxx_flags = ["-O3"]
    # Find libc10 / libtorch at load time even when `torch` was not imported first.
    link_flags = [f"-Wl,-rpath,{Path(torch.__file__).parent / 'lib'}"] if sys.platform != "win32" else []
    if _compiler_accepts("-fopenmp"):
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    link_flags += _shared_runtime_link_args()
    sources = ["csrc/ops.cpp"]
    nvcc = shutil.which("nvcc") or (CUDA_HOME and shutil.which(os.path.join(CUDA_HOME, "bin", "nvcc")))
    with_cuda = torch.version.cuda is not None and bool(nvcc)
    if with_cuda:
        sources += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "cuda").glob("*.cu"))
        ext = CUDAExtension(
            EXT_NAME,
            sources,
            define_macros=[("AL_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]},
            extra_link_args=link_flags,
        )
    else:
        ext = CppExtension(EXT_NAME, sources, extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags)

    class OptionalBuildExt(BuildExtension):
        """Builds the extension, or warns once and carries on when it cannot be compiled."""

        def run(self):
            try:
                super().run()
            except Exception as exc:  # no compiler, broken toolchain...
                _warn_once(f"could not build {EXT_NAME} ({type(exc).__name__}: {exc})")
                self.extensions = []

        def get_outputs(self):
            return super().get_outputs() if self.extensions else []

        def get_output_mapping(self):
            return super().get_output_mapping() if self.extensions else {}

    return {"ext_modules": [ext], "cmdclass": {"build_ext": OptionalBuildExt.with_options(use_ninja=True)}}


setup(
    packages=packages,
    package_dir={"agent_lightning.kernels": "kernels/triton"},
    **_extension_setup(),
)
