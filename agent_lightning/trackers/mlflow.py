"""MLflow tracker: params, per-step metrics and artifacts of a run in an MLflow store.

By default the store is a SQLite file inside the run directory
(``sqlite:///RUN_DIR/mlflow.db``, artifacts under ``RUN_DIR/mlartifacts``), viewed with::

    mlflow ui --backend-store-uri sqlite:///RUN_DIR/mlflow.db

``MLFLOW_TRACKING_URI`` (or the ``tracking_uri`` option) points it anywhere else: a server,
Databricks, another database. The run id is kept in ``RUN_DIR/mlflow_run.json``: a resumed
run (or any later process logging to the same run directory) continues that MLflow run.

The store is first contacted in ``log_config``, never in the constructor, so that an
unreachable server costs the run this tracker only (the trainer's fan-out disables it with a
warning naming it). How long an unreachable server is retried is MLflow's
``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` / ``MLFLOW_HTTP_REQUEST_TIMEOUT``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from agent_lightning.config import parse_options, require_package
from agent_lightning.hookspecs import hookimpl
from agent_lightning.trackers._flatten import (flat_config, numeric_metrics, scrub,
                                               scrub_text, secret_values, trajectories_due)
from agent_lightning.trackers._state import RunState

log = logging.getLogger("agent_lightning")

DB_FILE = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
PARAMS_PER_BATCH = 100  # MLflow's limits on one log_batch call
METRICS_PER_BATCH = 1000


class MLflowOptions(BaseModel):
    """Options of the ``mlflow`` tracker (``trackers: [{name: mlflow, ...}]``)."""

    model_config = ConfigDict(extra="forbid")
    tracking_uri: str | None = Field(None, description="default: MLFLOW_TRACKING_URI, else sqlite:///RUN_DIR/mlflow.db")
    experiment: str | None = Field(None, description="default: MLFLOW_EXPERIMENT_NAME, else 'agent-lightning'")
    run_name: str | None = Field(None, description="default: MLFLOW_RUN_NAME, else the run directory's name")
    tags: dict[str, str] = Field(default_factory=dict, description="extra run tags")
    log_checkpoints: bool = Field(False, description="upload each checkpoint as artifacts/checkpoints/step-N")
    trajectories_every: int | None = Field(None, ge=0, description="steps between trajectory artifacts "
                                                                   "(default: trainer.eval_every; 0: never)")
    connect_timeout_s: float = Field(10.0, gt=0, description="an http(s) server that does not answer within this "
                                                             "is given up at once, not retried for minutes")


def check_reachable(uri: str, timeout_s: float) -> None:
    """Raise ``ConnectionError`` when an ``http(s)`` tracking server does not answer at all.

    MLflow retries an unreachable server with backoff (about four minutes with its default
    ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``) before failing; one probe of ``/health`` lets the
    tracker give up at once. Any HTTP answer, even 401 or 404, counts as reachable.
    """
    import urllib.error
    import urllib.parse
    import urllib.request

    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return
    netloc = parts.hostname or ""
    netloc = f"[{netloc}]" if ":" in netloc else netloc  # IPv6
    if parts.port:
        netloc += f":{parts.port}"
    probe = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", ""))
    try:
        urllib.request.urlopen(probe, timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return  # the server answered
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConnectionError(f"MLflow tracking server {scrub_text(uri)} unreachable ({reason})") from None


class MLflowTracker:
    """Logs to one MLflow run per run directory.

    Params: the flattened, scrubbed config (``trainer.steps``, ``algorithm.lr``...).
    Metrics: every numeric metric at its trainer step. Artifacts: ``config.yaml`` (scrubbed),
    ``trajectories/step-N.jsonl``, ``checkpoints/step-N/`` (``log_checkpoints``), and what
    ``log_artifact`` is handed.
    """

    description = "MLflow run (local SQLite store in the run directory, or MLFLOW_TRACKING_URI)"

    def __init__(self, run_dir: str, **options: Any):
        self.options: MLflowOptions = parse_options(MLflowOptions, "trackers[mlflow]", options)
        require_package("mlflow", "trackers[mlflow]", "mlflow")
        self.run_dir = Path(run_dir)
        self.state = RunState(run_dir, "mlflow")
        self.client: Any = None
        self.run_id: str | None = None
        self.config: Mapping[str, Any] = {}

    @property
    def tracking_uri(self) -> str:
        """Where the run is stored (option, then ``MLFLOW_TRACKING_URI``, then the run directory)."""
        return (self.options.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
                or f"sqlite:///{(self.run_dir / DB_FILE).resolve()}")

    # ------------------------------------------------------------------ tracker interface

    def resume(self, step: int) -> None:
        """The trainer continues from the checkpoint at ``step``: do not log again the steps
        the interrupted process logged past it."""
        self.state.resume(step)

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Open (or reopen) the run; log the config as params and as ``config.yaml``."""
        import yaml

        self.config = config
        run_id = self._run()
        self._log_params(flat_config(config))
        self.client.log_text(run_id, yaml.safe_dump(scrub(dict(config)), sort_keys=False), "config.yaml")

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        if not self.state.should_log(step):
            return
        self._run()
        now = int(time.time() * 1000)
        batch = [Metric(key, value, now, int(step)) for key, value in numeric_metrics(metrics).items()]
        for start in range(0, len(batch), METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=batch[start:start + METRICS_PER_BATCH])
        self.state.logged(int(step))

    def log_trajectories(self, step: int, records: Sequence[Mapping[str, Any]]) -> None:
        """Sampled trajectories as ``trajectories/step-N.jsonl`` (on the steps that are due)."""
        if not records or not trajectories_due(step, self.options.trajectories_every, self.config):
            return
        secrets = secret_values()
        text = "".join(scrub_text(json.dumps(record), secrets) + "\n" for record in records)
        self.client.log_text(self._run(), text, f"trajectories/step-{int(step)}.jsonl")

    def log_checkpoint(self, step: int, path: str) -> None:
        """Upload the checkpoint folder as ``checkpoints/step-N`` when ``log_checkpoints`` is on."""
        if self.options.log_checkpoints:
            self.client.log_artifacts(self._run(), str(path), f"checkpoints/step-{int(step)}")

    def log_artifact(self, path: str, name: str | None = None) -> None:
        """A file or folder into the run's artifacts, at the artifact path ``name``
        (``"eval/results.json"``; default: the file's or folder's own name)."""
        import shutil
        import tempfile

        run_id = self._run()
        source = Path(path)
        target = Path(name or source.name)
        if source.is_dir():
            self.client.log_artifacts(run_id, str(source), target.as_posix())
            return
        folder = None if target.parent == Path(".") else target.parent.as_posix()
        if target.name == source.name:
            self.client.log_artifact(run_id, str(source), folder)
            return
        with tempfile.TemporaryDirectory() as tmp:  # MLflow keeps a file's own name: stage it renamed
            renamed = Path(tmp) / target.name
            shutil.copyfile(source, renamed)
            self.client.log_artifact(run_id, str(renamed), folder)

    def close(self) -> None:
        """End the run: FINISHED, or FAILED / KILLED when the trainer is unwinding an error."""
        if self.run_id is None:
            return
        error = sys.exc_info()[0]  # close() runs in the trainer's ``finally``
        status = "FINISHED" if error is None else "KILLED" if issubclass(error, KeyboardInterrupt) else "FAILED"
        run_id, self.run_id = self.run_id, None
        self.client.set_terminated(run_id, status)

    # ------------------------------------------------------------------ helpers

    def _run(self) -> str:
        """The open run's id; the first call opens it (a later process, such as
        ``alightning eval``, may log without ``log_config``)."""
        if self.run_id is None:
            from mlflow import MlflowClient

            check_reachable(self.tracking_uri, self.options.connect_timeout_s)
            self.client = MlflowClient(tracking_uri=self.tracking_uri)
            self.run_id = self._open_run()
        return self.run_id

    def _experiment_id(self) -> str:
        name = self.options.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "agent-lightning"
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        local = self.options.tracking_uri is None and "MLFLOW_TRACKING_URI" not in os.environ
        location = (self.run_dir / ARTIFACT_DIR).resolve().as_uri() if local else None
        return self.client.create_experiment(name, artifact_location=location)

    def _open_run(self) -> str:
        from mlflow.exceptions import MlflowException

        if self.state.run_id:
            try:
                self.client.update_run(self.state.run_id, status="RUNNING")
                return self.state.run_id
            except MlflowException as exc:
                log.warning("mlflow: run %s from %s is not in %s (%s); starting a new run",
                            self.state.run_id, self.state.path, self.tracking_uri, exc.error_code)
        name = self.options.run_name or os.environ.get("MLFLOW_RUN_NAME") or self.run_dir.resolve().name
        tags = {"alightning.run_dir": str(self.run_dir.resolve()), **self.options.tags}
        run = self.client.create_run(self._experiment_id(), run_name=name, tags=tags)
        self.state.start(run.info.run_id)
        return run.info.run_id

    def _log_params(self, flat: Mapping[str, Any]) -> None:
        """Params not logged yet; MLflow forbids changing one, so a changed value (a resumed run
        with other settings) is kept as first logged and reported."""
        from mlflow.entities import Param

        logged = self.client.get_run(self.run_id).data.params
        changed = sorted(k for k, v in flat.items() if k in logged and logged[k] != str(v)[:MAX_PARAM_LENGTH])
        if changed:
            log.warning("mlflow: params %s differ from the values this run first logged; kept the first ones",
                        ", ".join(changed))
        params = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in flat.items() if k not in logged]
        for start in range(0, len(params), PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[start:start + PARAMS_PER_BATCH])


@hookimpl
def register_trackers(register):
    register("mlflow", MLflowTracker)
