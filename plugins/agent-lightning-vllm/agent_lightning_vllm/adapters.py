"""Versioned LoRA adapters for vLLM: one directory and one adapter id per policy version.

vLLM caches a LoRA adapter by its integer id, so a retrained adapter must come under a
new id to be loaded at all: version ``v`` is published as ``lora_int_id = v + 1`` (ids
start at 1) in ``<root>/v<v>/`` (peft's ``adapter_config.json`` +
``adapter_model.safetensors``). Only the base weights stay resident in vLLM; syncing a
version moves the adapter's few megabytes, never the whole model. The last ``keep``
versions stay on disk (requests in flight may still name them); older directories and
their ids are retired.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class AdapterVersion:
    """One published adapter: ``name`` and ``int_id`` go into ``vllm.lora.request.LoRARequest``."""

    version: int
    name: str
    int_id: int
    path: str


class AdapterVersions:
    """Publishes adapter versions under ``root``.

    Args:
        root: Directory for the versions (created).
        keep: Versions kept on disk, the newest included (>= 1).
    """

    def __init__(self, root: str | Path, keep: int = 2):
        if keep < 1:
            raise ValueError(f"backend.options.keep_adapters must be >= 1, got {keep}")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self.published: list[AdapterVersion] = []

    @property
    def current(self) -> AdapterVersion | None:
        return self.published[-1] if self.published else None

    def publish(self, version: int, save: Callable[[str], None]) -> tuple[AdapterVersion, list[AdapterVersion]]:
        """Write version ``version`` with ``save(directory)`` (e.g. a peft model's
        ``save_pretrained``) unless it is the current one.

        Returns:
            ``(the version to sample with, versions retired by this call)``; the caller
            removes the retired ids from the engine.

        Raises:
            ValueError: ``version`` is older than the current one (versions only grow).
        """
        current = self.current
        if current is not None and version == current.version:
            return current, []
        if current is not None and version < current.version:
            raise ValueError(f"adapter version {version} is older than the published {current.version}")
        folder = self.root / f"v{version}"
        if folder.exists():
            shutil.rmtree(folder)
        save(str(folder))
        if not (folder / "adapter_config.json").is_file():
            raise ValueError(f"saving adapter version {version} wrote no adapter_config.json into {folder}")
        entry = AdapterVersion(version=version, name=f"policy-v{version}", int_id=version + 1, path=str(folder))
        self.published.append(entry)
        retired = self.published[:-self.keep]
        self.published = self.published[-self.keep:]
        for old in retired:
            shutil.rmtree(old.path, ignore_errors=True)
        return entry, retired
