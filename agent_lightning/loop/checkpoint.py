"""Checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is ``<run>/checkpoints/step-N/``. It is written into a temporary sibling
directory, then ``manifest.json`` is written last: the blake2b digest and size of every
file, and a digest of the manifest itself. The manifest is the commit marker: the folder is
renamed into place only once it is complete, and a folder without a valid manifest is never
loaded. ``latest_checkpoint`` verifies what it picks and falls back to the newest intact
checkpoint, warning with the name of the damaged file; when none is intact it raises a
one-line ``CheckpointError``. A write that fails (a full disk) leaves the previous
checkpoints as they were and raises ``CheckpointWriteError``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

from agent_lightning.config import ConfigError

log = logging.getLogger("agent_lightning.loop.checkpoint")

_TENSOR = "__tensor__"
_TUPLE = "__tuple__"
_INTKEYS = "__intkeys__"
STEP_DIR = re.compile(r"^step-(\d+)$")
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
_CHUNK = 1 << 20


class CheckpointError(ConfigError):
    """A checkpoint cannot be used (damaged, incomplete, or none intact): one line naming the
    file; the CLI exits with code 2."""


class CheckpointWriteError(RuntimeError):
    """Writing a checkpoint failed (e.g. the disk is full); earlier checkpoints are untouched."""


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


# ----------------------------------------------------------------------------- manifest


def file_digest(path: Path) -> str:
    """blake2b-256 of a file's bytes, hex (read in 1 MiB chunks)."""
    digest = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _body_digest(body: dict[str, Any]) -> str:
    """Digest of the manifest's content without its own ``digest`` field (canonical JSON)."""
    payload = json.dumps({k: v for k, v in body.items() if k != "digest"}, sort_keys=True).encode()
    return hashlib.blake2b(payload, digest_size=32).hexdigest()


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(folder: Path, step: int) -> None:
    """Write ``manifest.json`` (size and blake2b of every other file) and fsync it."""
    files = {name: {"bytes": (folder / name).stat().st_size, "blake2b": file_digest(folder / name)}
             for name in _files(folder)}
    body: dict[str, Any] = {"format": MANIFEST_FORMAT, "step": step, "hash": "blake2b-256", "files": files}
    body["digest"] = _body_digest(body)
    with open(folder / MANIFEST, "w") as handle:
        handle.write(json.dumps(body, indent=1))
        handle.flush()
        os.fsync(handle.fileno())


def verify_checkpoint(folder: Path) -> None:
    """Raise ``CheckpointError`` naming the first file that is missing, added, truncated or
    changed since ``write_manifest`` (the manifest itself included)."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise CheckpointError(f"{manifest}: missing (the checkpoint was never committed, or the manifest was deleted)")
    try:
        body = json.loads(manifest.read_text())
        files = body["files"]
        intact = isinstance(files, dict) and body.get("digest") == _body_digest(body)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        intact = False
    if not intact:
        raise CheckpointError(f"{manifest}: edited or corrupted (its own digest does not match)")
    for name, entry in files.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing from checkpoint step-{body['step']}")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise CheckpointError(f"{path}: truncated or extended ({size} bytes, the manifest says {entry['bytes']})")
        if file_digest(path) != entry["blake2b"]:
            raise CheckpointError(f"{path}: contents changed since it was written (blake2b mismatch)")
    extra = sorted(set(_files(folder)) - set(files))
    if extra:
        raise CheckpointError(f"{folder / extra[0]}: not in the checkpoint's manifest")


# ----------------------------------------------------------------------------- finding


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Every ``step-N`` folder of a run, by step, committed or not (temporary directories of
    saves in progress are ignored); ``verify_checkpoint`` tells whether one is intact."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = []
    for child in folder.iterdir():
        match = STEP_DIR.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return sorted(found)


def intact_checkpoints(run_dir: Path) -> tuple[list[tuple[int, Path]], list[tuple[int, Path, str]]]:
    """``(intact, damaged)``: checkpoints that verify, by step, and those that do not with why."""
    intact, damaged = [], []
    for step, folder in list_checkpoints(run_dir):
        try:
            verify_checkpoint(folder)
        except CheckpointError as exc:
            damaged.append((step, folder, str(exc)))
        else:
            intact.append((step, folder))
    return intact, damaged


def latest_checkpoint(run_dir: Path) -> tuple[int, Path] | None:
    """The newest checkpoint that verifies, or ``None`` when the run has none at all.

    A newer damaged checkpoint is skipped with a warning naming the file; when checkpoints
    exist but none is intact, a one-line ``CheckpointError``.
    """
    found = list_checkpoints(run_dir)
    problems = []
    for step, folder in reversed(found):
        try:
            verify_checkpoint(folder)
        except CheckpointError as exc:
            problems.append(str(exc))
            log.warning("checkpoint step-%d is damaged and skipped: %s", step, exc)
            continue
        if problems:
            log.warning("resuming from step-%d, the newest intact checkpoint", step)
        return step, folder
    if found:
        raise CheckpointError(f"no intact checkpoint in {checkpoint_dir(run_dir)}: " + "; ".join(problems))
    return None


# ----------------------------------------------------------------------------- writing


def write_checkpoint(run_dir: Path, step: int, write: Callable[[Path], None], keep: int) -> Path:
    """Call ``write(tmp_dir)``, commit it with a manifest and publish it as ``step-<step>``
    (an atomic rename); then prune all but the newest ``keep``.

    A failure while writing (``OSError``: a full disk, a lost mount) removes the temporary
    folder, leaves every published checkpoint untouched, and raises ``CheckpointWriteError``.
    An interruption (``KeyboardInterrupt``) leaves the temporary folder, which is never picked.
    """
    folder = checkpoint_dir(run_dir)
    final = folder / f"step-{step}"
    tmp = folder / f".tmp-step-{step}-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        write(tmp)
        for child in tmp.rglob("*"):
            if child.is_file():
                with open(child, "rb") as handle:
                    os.fsync(handle.fileno())
        write_manifest(tmp, step)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointWriteError(f"writing checkpoint step-{step} in {folder} failed: {exc}") from exc
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(folder)
    for _, old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
