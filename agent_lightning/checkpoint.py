"""Checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is ``<run>/checkpoints/step-N/``. It is written into a temporary sibling
directory and renamed into place only when complete, so a save killed half-way never
leaves a directory that ``latest_checkpoint`` would pick.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

_TENSOR = "__tensor__"
_TUPLE = "__tuple__"
_INTKEYS = "__intkeys__"
STEP_DIR = re.compile(r"^step-(\d+)$")


def _flatten(obj: Any, tensors: dict[str, Any], prefix: str) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        key = f"{prefix}#{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {_TENSOR: key}
    if isinstance(obj, dict):
        int_keys = bool(obj) and all(isinstance(k, int) for k in obj)
        out = {str(k): _flatten(v, tensors, f"{prefix}.{k}") for k, v in obj.items()}
        return {_INTKEYS: out} if int_keys else out
    if isinstance(obj, tuple):
        return {_TUPLE: [_flatten(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_flatten(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"checkpoint state at '{prefix}' has a value of type {type(obj).__name__} that cannot be stored without pickle")


def _unflatten(obj: Any, tensors: dict[str, Any]) -> Any:
    if isinstance(obj, dict):
        if _TENSOR in obj:
            return tensors[obj[_TENSOR]]
        if _TUPLE in obj:
            return tuple(_unflatten(v, tensors) for v in obj[_TUPLE])
        if _INTKEYS in obj:
            return {int(k): _unflatten(v, tensors) for k, v in obj[_INTKEYS].items()}
        return {k: _unflatten(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def save_state(state: Any, stem: Path) -> None:
    """Write nested state (dicts, lists, tuples, scalars, tensors) as ``stem.json`` + ``stem.safetensors``."""
    from safetensors.torch import save_file

    tensors: dict[str, Any] = {}
    structure = _flatten(state, tensors, "state")
    save_file(tensors, str(stem.with_suffix(".safetensors")))
    stem.with_suffix(".json").write_text(json.dumps(structure, indent=1))


def load_state(stem: Path) -> Any:
    from safetensors.torch import load_file

    tensors = load_file(str(stem.with_suffix(".safetensors")))
    return _unflatten(json.loads(stem.with_suffix(".json").read_text()), tensors)


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, by step (temporary directories are ignored)."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = []
    for child in folder.iterdir():
        match = STEP_DIR.match(child.name)
        if match and child.is_dir() and (child / "trainer.json").is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> tuple[int, Path] | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def write_checkpoint(run_dir: Path, step: int, write: Callable[[Path], None], keep: int) -> Path:
    """Call ``write(tmp_dir)`` and atomically publish it as ``step-<step>``; prune old ones.

    ``write`` must write ``trainer.json`` last-or-anywhere: a directory counts as a
    checkpoint only once renamed into place.
    """
    folder = checkpoint_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{step}"
    tmp = folder / f".tmp-step-{step}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    write(tmp)
    for child in tmp.rglob("*"):
        if child.is_file():
            with open(child, "rb") as handle:
                os.fsync(handle.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for _, old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final
