"""Fixtures for the tracker tests: no network, W&B's state kept in the test's directory,
and readers that get back what each tracker stored, through each tool's own formats."""

from __future__ import annotations

import json
import shutil
import struct
import time
from pathlib import Path

import pytest

TRACKER_ENV = ("WANDB_API_KEY", "WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_NAME", "WANDB_TAGS",
               "WANDB_RUN_GROUP", "WANDB_NOTES", "WANDB_DIR", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME",
               "MLFLOW_RUN_NAME")


@pytest.fixture(autouse=True)
def _isolated_trackers(monkeypatch, tmp_path):
    """No tracker variable from the calling shell leaks in (a WANDB_API_KEY would make W&B go
    online); W&B's config, cache and staging folders live under the test's directory."""
    for name in TRACKER_ENV:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "wandb-home"
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(home / name.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")


@pytest.fixture
def make_tracker():
    """Build a registered tracker the way the trainer does: by name, with ``run_dir``."""
    from agent_lightning.plugins import build_plugin_manager

    pm = build_plugin_manager(autoload=False)

    def make(tracker, run_dir, /, **options):
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        return pm.trackers.create(tracker, run_dir=str(run_dir), **options)

    return make


@pytest.fixture(scope="session")
def _mlflow_template(tmp_path_factory):
    """An empty MLflow SQLite store, created (schema migrations: ~5 s) once per session."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_store(_mlflow_template):
    """Put an empty, already migrated ``mlflow.db`` into a run directory (where the tracker
    looks by default); returns a function ``run_dir -> MlflowClient`` on that store."""
    from mlflow import MlflowClient

    def prepare(run_dir):
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        shutil.copy(_mlflow_template, Path(run_dir) / "mlflow.db")
        return MlflowClient(tracking_uri=f"sqlite:///{Path(run_dir).resolve() / 'mlflow.db'}")

    return prepare


def _wandb_records(path: Path) -> list:
    """The protobuf records of a ``.wandb`` transaction log.

    The file is ``:W&B`` + magic (2 bytes) + version (1 byte), then 32 KiB blocks of
    LevelDB-log chunks: crc32 (4) + length (2) + type (1: full, 2: first, 3: middle, 4: last).
    wandb no longer ships a Python reader, so the test reads the framing here and decodes
    each record with wandb's own protobuf schema.
    """
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    pos, block, pending, raw = 7, 32768, b"", []
    while pos + 7 <= len(data):
        room = block - pos % block
        if room < 7:  # a block's tail too short for a header is padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:  # zero padding up to the end of the block
            pos += room
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            raw.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            raw.append(pending + chunk)
            pending = b""
    records = []
    for item in raw:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(item)
        records.append(record)
    return records


def _items(items) -> dict:
    """History/config items as a dict; a nested key (``["trajectories", "path"]``, how W&B
    stores a logged table's fields) becomes nested dicts."""
    out: dict = {}
    for item in items:
        *parents, last = list(item.nested_key) or [item.key]
        target = out
        for key in parents:
            target = target.setdefault(key, {})
        target[last] = json.loads(item.value_json)
    return out


@pytest.fixture
def read_wandb():
    """``run_dir -> list of offline runs`` (oldest first, each read once complete), each with ``id``,
    ``project``, ``name``, ``tags``, ``config`` (as logged) and ``history`` (rows as dicts)."""

    def complete_records(path, timeout_s=60.0):
        # run.finish() returns before wandb-core has flushed an offline run's log: wait for
        # the exit record, which is written last
        deadline = time.monotonic() + timeout_s
        while True:
            records = _wandb_records(path) if path.stat().st_size >= 7 else []
            if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
                return records
            time.sleep(0.1)

    def read(run_dir):
        runs = []
        for folder in sorted(Path(run_dir, "wandb").glob("offline-run-*")):
            (log,) = folder.glob("run-*.wandb")
            run = {"folder": folder, "config": {}, "history": []}
            for record in complete_records(log):
                kind = record.WhichOneof("record_type")
                if kind == "run":
                    r = record.run
                    run.update(id=r.run_id, project=r.project, entity=r.entity, name=r.display_name,
                               tags=list(r.tags), group=r.run_group, notes=r.notes)
                    run["config"].update(_items(r.config.update))
                elif kind == "config":
                    run["config"].update(_items(record.config.update))
                elif kind == "history":
                    run["history"].append(_items(record.history.item))
            runs.append(run)
        return runs

    return read


@pytest.fixture
def read_tensorboard():
    """``log_dir -> EventAccumulator`` loaded with every event file there."""

    def read(log_dir):
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
        accumulator.Reload()
        return accumulator

    return read
