"""Weights & Biases tracker: one W&B run per run directory, online or offline.

Online when ``WANDB_API_KEY`` is set, otherwise offline into ``RUN_DIR/wandb/`` (upload it
later with ``wandb sync RUN_DIR/wandb/offline-run-*``); the ``mode`` option or ``WANDB_MODE``
decide instead when given. Project, entity, run name, group, tags and notes come from the
tracker options, else from W&B's own variables (``WANDB_PROJECT``, ``WANDB_ENTITY``,
``WANDB_NAME``, ``WANDB_RUN_GROUP``, ``WANDB_TAGS``, ``WANDB_NOTES``). The run id is kept in
``RUN_DIR/wandb_run.json``: a resumed run continues the same W&B run.

Metrics are logged against a ``step`` metric (the trainer step) rather than W&B's internal
counter, so that a later process may log at any step. The config is scrubbed of secrets
before it is sent; the API key is never part of it.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from agent_lightning.config import parse_options, require_package
from agent_lightning.hookspecs import hookimpl
from agent_lightning.trackers._flatten import (numeric_metrics, render_conversation, scrub,
                                               scrub_text, secret_values, trajectories_due)
from agent_lightning.trackers._state import RunState

STEP_KEY = "step"
TABLE_KEY = "trajectories"
TABLE_COLUMNS = ["step", "id", "task", "reward", "success", "failure", "conversation"]


class WandbOptions(BaseModel):
    """Options of the ``wandb`` tracker (``trackers: [{name: wandb, ...}]``)."""

    model_config = ConfigDict(extra="forbid")
    project: str | None = Field(None, description="default: WANDB_PROJECT, else 'agent-lightning'")
    entity: str | None = Field(None, description="default: WANDB_ENTITY, else your default entity")
    name: str | None = Field(None, description="run name; default: WANDB_NAME, else the run directory's name")
    group: str | None = Field(None, description="default: WANDB_RUN_GROUP")
    tags: list[str] | None = Field(None, description="default: WANDB_TAGS (comma list)")
    notes: str | None = Field(None, description="default: WANDB_NOTES")
    mode: Literal["online", "offline", "disabled"] | None = Field(
        None, description="default: WANDB_MODE, else online with WANDB_API_KEY, offline without")
    log_checkpoints: bool = Field(False, description="log each checkpoint as a 'model' artifact")
    trajectories_every: int | None = Field(None, ge=0, description="steps between trajectory tables "
                                                                   "(default: trainer.eval_every; 0: never)")


class WandbTracker:
    """Logs the scrubbed config, per-step metrics and trajectory tables to a W&B run."""

    description = "Weights & Biases run (offline into the run directory unless WANDB_API_KEY is set)"

    def __init__(self, run_dir: str, **options: Any):
        self.options: WandbOptions = parse_options(WandbOptions, "trackers[wandb]", options)
        require_package("wandb", "trackers[wandb]", "wandb")
        self.run_dir = Path(run_dir)
        self.state = RunState(run_dir, "wandb")
        self.run: Any = None
        self.config: Mapping[str, Any] = {}
        self._table: tuple[int, Any] | None = None  # trajectories waiting for their step's metrics

    @property
    def mode(self) -> str:
        """``mode`` option, else ``WANDB_MODE``, else online with ``WANDB_API_KEY`` and offline without."""
        fallback = "online" if os.environ.get("WANDB_API_KEY") else "offline"
        return self.options.mode or os.environ.get("WANDB_MODE") or fallback

    def names(self) -> dict[str, Any]:
        """Project, entity, name, group, tags, notes: options first, then ``WANDB_*`` variables
        (read here, at init: W&B reads its variables once per process)."""
        o, env = self.options, os.environ
        tags = o.tags if o.tags is not None else [t.strip() for t in env.get("WANDB_TAGS", "").split(",") if t.strip()]
        named = {"project": o.project or env.get("WANDB_PROJECT") or "agent-lightning",
                 "entity": o.entity or env.get("WANDB_ENTITY"),
                 "name": o.name or env.get("WANDB_NAME") or self.run_dir.resolve().name,
                 "group": o.group or env.get("WANDB_RUN_GROUP"), "tags": tags or None,
                 "notes": o.notes or env.get("WANDB_NOTES")}
        return {k: v for k, v in named.items() if v is not None}

    # ------------------------------------------------------------------ tracker interface

    def resume(self, step: int) -> None:
        """The trainer continues from the checkpoint at ``step``: do not log again the steps
        the interrupted process logged past it (W&B cannot rewrite them)."""
        self.state.resume(step)

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Start (or resume) the run with the scrubbed config."""
        self.config = config
        if self.run is None:
            self._start(scrub(dict(config)))
        else:
            self.run.config.update(scrub(dict(config)), allow_val_change=True)

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.state.should_log(step):
            return
        if self.run is None:
            self._start()
        row: dict[str, Any] = {STEP_KEY: int(step), **numeric_metrics(metrics)}
        if self._table is not None and self._table[0] == step:
            row[TABLE_KEY] = self._table[1]
            self._table = None
        self._flush_table()
        self.run.log(row)
        self.state.logged(int(step))

    def log_trajectories(self, step: int, records: Sequence[Mapping[str, Any]]) -> None:
        """Sampled trajectories as a ``wandb.Table`` (logged with the step's metrics)."""
        import wandb

        if not records or not self.state.should_log(step):
            return
        if not trajectories_due(step, self.options.trajectories_every, self.config):
            return
        if self.run is None:
            self._start()
        secrets = secret_values()
        rows = [[int(step), r.get("id"), r.get("task"), r.get("reward"), r.get("success"), r.get("failure"),
                 scrub_text(render_conversation(r), secrets)] for r in records]
        self._flush_table()
        self._table = (int(step), wandb.Table(columns=TABLE_COLUMNS, data=rows))

    def log_checkpoint(self, step: int, path: str) -> None:
        """The checkpoint folder as a ``model`` artifact (aliases ``step-N``, ``latest``)."""
        if self.options.log_checkpoints:
            if self.run is None:
                self._start()
            self._log_folder_or_file(path, f"{self.run.id}-checkpoint", "model", [f"step-{int(step)}", "latest"])

    def log_artifact(self, path: str, name: str | None = None) -> None:
        """A file or folder as a ``file`` artifact named after ``name`` (``eval/results.json``
        becomes ``eval_results.json``)."""
        if self.run is None:
            self._start()
        self._log_folder_or_file(path, name or Path(path).name, "file", None)

    def close(self) -> None:
        """Finish the run (exit code 1 when the trainer is unwinding an error)."""
        if self.run is None:
            return
        self._flush_table()
        run, self.run = self.run, None
        run.finish(exit_code=0 if sys.exc_info()[0] is None else 1)  # close() runs in the trainer's ``finally``

    # ------------------------------------------------------------------ helpers

    def _start(self, config: dict[str, Any] | None = None) -> None:
        """Start the run, or resume the one this run directory already has (a later process,
        such as ``alightning eval``, may log without ``log_config``)."""
        import wandb

        resume = {"id": self.state.run_id, "resume": "allow"} if self.state.run_id else {}
        self.run = wandb.init(
            dir=str(self.run_dir), mode=self.mode, config=config, allow_val_change=True,
            reinit="create_new", **self.names(), **resume,
            # the trainer's console tracker owns the terminal: W&B must not wrap stdout/stderr
            settings=wandb.Settings(console="off"),
        )
        self.run.define_metric("*", step_metric=STEP_KEY)
        if self.state.run_id != self.run.id:
            self.state.start(self.run.id)

    def _flush_table(self) -> None:
        """A table whose step got no metrics is logged on its own row."""
        if self._table is not None:
            step, table = self._table
            self._table = None
            self.run.log({STEP_KEY: step, TABLE_KEY: table})

    def _log_folder_or_file(self, path: str, name: str, kind: str, aliases: list[str] | None) -> None:
        import wandb

        artifact = wandb.Artifact(re.sub(r"[^\w.-]", "_", name), type=kind)
        if Path(path).is_dir():
            artifact.add_dir(str(path))
        else:
            artifact.add_file(str(path), name=Path(name).name)
        self.run.log_artifact(artifact, aliases=aliases)


@hookimpl
def register_trackers(register):
    register("wandb", WandbTracker)
