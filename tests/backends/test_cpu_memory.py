"""backend.cpu_memory: reuse — a step's large CPU tensors reuse the pages the last step freed
(cpu_memory.py), measured as page faults in a fresh process (the setting is process-wide)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from agent_lightning.config import ConfigError, validate

# A "step" allocates and writes a 64 MiB tensor (above glibc's largest mmap threshold, 32 MiB) and
# frees it; its minor page faults are counted. With fresh mmap pages every step, each step faults on
# all 16,384 of its 4 KiB pages; with the freed memory kept, the steps after the first few on none.
CHILD = r"""
import json, resource, sys
import torch
mode = sys.argv[1]
if mode == "backend":
    from agent_lightning.backends.transformers.backend import TransformersBackend
    from agent_lightning.config import BackendConfig, ModelConfig
    TransformersBackend(ModelConfig(preset="tiny", preset_options={"hidden_size": 16, "num_layers": 1, "num_heads": 2}),
                        BackendConfig(device="cpu", cpu_memory=sys.argv[2]))
elif mode == "direct":
    from agent_lightning.backends.transformers.cpu_memory import reuse_freed_memory
    print(json.dumps({"taken": reuse_freed_memory(), "again": reuse_freed_memory()}))
    sys.exit(0)
faults = []
for step in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty(16 * 1024 * 1024).fill_(1.0)
    del x
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(faults))
"""


def _child(*args: str):
    out = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_reuse_keeps_freed_pages_for_the_next_step_and_system_does_not():
    reuse, system = _child("backend", "reuse"), _child("backend", "system")
    assert sum(reuse[-4:]) < 1000, reuse  # the 64 MiB block comes back from the heap, already touched
    assert min(system[-4:]) > 10000, system  # glibc's default: a fresh mapping, every page faulted again


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_reuse_freed_memory_reports_that_glibc_took_it_and_is_idempotent():
    assert _child("direct") == {"taken": True, "again": True}


def test_a_bad_cpu_memory_value_names_the_option():
    with pytest.raises(ConfigError, match="backend.cpu_memory"):
        validate({"model": {"preset": "tiny"}, "environment": {"name": "guess-number"}, "reward": {"name": "env-reward"},
                  "algorithm": {"name": "grpo"}, "backend": {"cpu_memory": "jemalloc"}})
