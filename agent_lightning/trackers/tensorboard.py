"""TensorBoard tracker: event files in ``RUN_DIR/tensorboard`` (``tensorboard --logdir RUN_DIR``).

Scalars: every numeric metric at its trainer step. Text: the scrubbed config (step 0) and
the sampled trajectories. A resumed run writes a purge marker at the checkpoint step, so
TensorBoard drops what the interrupted process logged past the checkpoint and shows the
resumed values, as ``metrics.jsonl`` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from agent_lightning.config import parse_options, require_package
from agent_lightning.hookspecs import hookimpl
from agent_lightning.trackers._flatten import (numeric_metrics, render_conversation, scrub,
                                               scrub_text, secret_values, trajectories_due)

LOG_DIR = "tensorboard"


class TensorBoardOptions(BaseModel):
    """Options of the ``tensorboard`` tracker (``trackers: [{name: tensorboard, ...}]``)."""

    model_config = ConfigDict(extra="forbid")
    log_dir: str | None = Field(None, description="default: RUN_DIR/tensorboard")
    trajectories_every: int | None = Field(None, ge=0, description="steps between trajectory texts "
                                                                   "(default: trainer.eval_every; 0: never)")


def _markdown_code(text: str) -> str:
    """Text shown verbatim by TensorBoard's markdown renderer (an indented code block)."""
    return "\n".join("    " + line for line in text.splitlines())


class TensorBoardTracker:
    """Writes scalars and text summaries with ``torch.utils.tensorboard.SummaryWriter``."""

    description = "TensorBoard event files in RUN_DIR/tensorboard"

    def __init__(self, run_dir: str, **options: Any):
        self.options: TensorBoardOptions = parse_options(TensorBoardOptions, "trackers[tensorboard]", options)
        require_package("tensorboard", "trackers[tensorboard]", "tensorboard")
        self.log_dir = Path(self.options.log_dir) if self.options.log_dir else Path(run_dir) / LOG_DIR
        self.writer: Any = None
        self.config: Mapping[str, Any] = {}
        self._purge_step: int | None = None

    def resume(self, step: int) -> None:
        """The trainer continues from the checkpoint at ``step``: events past it are purged."""
        self._purge_step = int(step) + 1

    def log_config(self, config: Mapping[str, Any]) -> None:
        import yaml

        self.config = config
        if self._purge_step is None:
            self._writer().add_text("config", _markdown_code(yaml.safe_dump(scrub(dict(config)), sort_keys=False)), 0)

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        writer = self._writer()
        for key, value in numeric_metrics(metrics).items():
            writer.add_scalar(key, value, int(step))
        writer.flush()  # a killed run keeps every step it logged

    def log_trajectories(self, step: int, records: Sequence[Mapping[str, Any]]) -> None:
        if not records or not trajectories_due(step, self.options.trajectories_every, self.config):
            return
        secrets = secret_values()
        text = "\n\n".join(_markdown_code(scrub_text(render_conversation(r), secrets)) for r in records)
        self._writer().add_text("trajectories", text, int(step))

    def log_artifact(self, path: str, name: str | None = None) -> None:
        return None  # event files hold summaries, not files

    def close(self) -> None:
        if self.writer is not None:
            writer, self.writer = self.writer, None
            writer.close()

    def _writer(self) -> Any:
        """The event writer, opened on first use (with the purge marker of a resumed run)."""
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.log_dir), purge_step=self._purge_step)
        return self.writer


@hookimpl
def register_trackers(register):
    register("tensorboard", TensorBoardTracker)
