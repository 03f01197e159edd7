"""The evaluation harness behind ``alightning eval``: every checkpoint of a run (or one),
and the base model, on a held-out split.

The policy is rebuilt exactly as training built it: a ``Trainer`` over the run's
``config.yaml`` (trackers left out) seeds the global RNGs with ``trainer.seed`` and then
builds the backend, so before any checkpoint is loaded it holds the step-0 weights. Each
checkpoint's weights are then loaded into it in turn, and episodes are played by
``Trainer.play_evaluation`` -- the very episodes, sampling noise and scoring of the
evaluation logged during training, so with the default settings the numbers at a step
equal the run's ``eval/...`` metrics at that step.

Results go to ``<run>/eval/results.json`` (merged by step with an earlier evaluation made
with the same settings), to ``--json PATH``, and to the run's trackers as
``ckpt_eval/...`` metrics at each checkpoint's step (the console tracker excepted: the
command prints its own table).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from agent_lightning import progress
from agent_lightning.config import ConfigError, RunConfig, apply_overrides, read_yaml, validate
from agent_lightning.evaluation.stats import summarize, tracker_metrics
from agent_lightning.loop import checkpoint as ckpt
from agent_lightning.types import SPLITS

log = logging.getLogger("agent_lightning.evaluation.harness")

RESULTS_FILE = Path("eval") / "results.json"
OVERRIDABLE = ("environment", "agent", "reward", "sampling")
"""Config sections an evaluation may change; the others define the policy and stay as trained."""


@dataclass
class EvalTarget:
    """A run directory and the checkpoints to evaluate (the base model comes on top)."""

    run_dir: Path
    checkpoints: list[tuple[int, Path]]


def resolve_target(path: str | Path) -> EvalTarget:
    """``RUN_DIR`` (every intact checkpoint) or ``RUN_DIR/checkpoints/step-N`` (that one).

    Checkpoints are verified against their manifests: a damaged one named on the command
    line is a one-line ``CheckpointError``; in a run directory it is skipped with a warning
    naming the damaged file.
    """
    path = Path(path)
    if path.is_dir() and ckpt.STEP_DIR.match(path.name) and path.parent.name == "checkpoints":
        run_dir = path.parent.parent
        ckpt.verify_checkpoint(path)
        checkpoints = [(int(ckpt.STEP_DIR.match(path.name).group(1)), path)]
    else:
        run_dir = path
        checkpoints = None
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{path}: not a run directory or checkpoint (no config.yaml in {run_dir})")
    if checkpoints is None:
        checkpoints, damaged = ckpt.intact_checkpoints(run_dir)
        for step, _folder, why in damaged:
            log.warning("checkpoint step-%d is damaged and not evaluated: %s", step, why)
    return EvalTarget(run_dir, [(step, folder) for step, folder in checkpoints if step != 0])


def eval_config(run_dir: Path, *, env: str | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """The run's config with ``--env`` and ``environment.*``/``reward.*``/``sampling.*``
    overrides applied (the model, backend and seed stay as trained)."""
    for item in overrides:
        section = item.partition("=")[0].strip().split(".")[0]
        if section not in OVERRIDABLE:
            raise ConfigError(f"eval override '{item}': only {', '.join(s + '.*' for s in OVERRIDABLE)} "
                              "can change (the policy is the run's)")
    data = read_yaml(str(run_dir / "config.yaml"))
    return validate(apply_overrides(data, ([f"environment.name={env}"] if env else []) + list(overrides)))


def work_name(config: RunConfig) -> str:
    """What a run plays, for tables: ``environment 'NAME'`` or ``agent ENTRYPOINT|COMMAND|NAME``."""
    if config.agent is not None:
        a = config.agent
        return f"agent {a.entrypoint or ' '.join(a.command or []) or a.name}"
    return f"environment '{config.environment.name}'"


def _settings(config: RunConfig, split: str, episodes: int, samples: int) -> dict[str, Any]:
    data = config.to_dict()
    work = data.get("environment") or {"name": work_name(config)}  # an agent run with its own task files
    return {"environment": work, "reward": data["reward"], "split": split, "episodes": episodes,
            "samples": samples, "eval_temperature": config.sampling.eval_temperature,
            "sampling": data["sampling"], "seed": config.trainer.seed}


def evaluate_run(
    path: str | Path,
    *,
    env: str | None = None,
    split: str = "eval",
    samples: int = 1,
    episodes: int | None = None,
    overrides: Sequence[str] = (),
    json_path: str | Path | None = None,
    log_trackers: bool = True,
    plugin_manager: Any = None,
) -> dict[str, Any]:
    """Evaluate the base model and the checkpoints of ``path``; write and return the results.

    Args:
        path: A run directory or one of its ``checkpoints/step-N`` folders.
        env: Another registered environment to evaluate on (default: the run's).
        split: ``"eval"`` (held out) or ``"train"``.
        samples: ``k`` of pass@k; every task is played at least ``k`` times.
        episodes: Episodes per checkpoint, dealt round-robin over the split's tasks
            (default ``trainer.eval_episodes``; raised to ``samples * tasks`` if lower).
        overrides: ``environment.*``, ``reward.*`` or ``sampling.*`` ``key=value`` items.
        json_path: Also write the results document here.
        log_trackers: Log ``ckpt_eval/...`` metrics to the run's trackers.

    Returns:
        ``{"run_dir", "settings", "checkpoints": [summarize(...) + step, checkpoint, time_s]}``
        with checkpoints sorted by step (step 0 is the base model).
    """
    from agent_lightning.loop.trainer import Trainer

    if split not in SPLITS:
        raise ConfigError(f"--split: '{split}' is not a split (allowed: {', '.join(SPLITS)})")
    if samples < 1:
        raise ConfigError(f"--samples: must be at least 1, got {samples}")
    if episodes is not None and episodes < 1:
        raise ConfigError(f"--episodes: must be at least 1, got {episodes}")
    target = resolve_target(path)
    config = eval_config(target.run_dir, env=env, overrides=overrides)
    jobs: list[tuple[int, Path | None]] = [(0, None), *target.checkpoints]
    results = []
    with progress.task("evaluating", total=len(jobs)) as bar:
        trainer = Trainer(config.model_copy(update={"trackers": []}), target.run_dir, plugin_manager=plugin_manager)
        try:
            tasks = trainer.eval_tasks if split == "eval" else trainer.train_tasks
            if not tasks:
                raise ConfigError(f"{work_name(config)} has no '{split}' tasks")
            n = max(episodes or config.trainer.eval_episodes, samples * len(tasks))
            for step, folder in jobs:
                bar.update(description=f"evaluating {'base model' if folder is None else folder.name}")
                if folder is not None:
                    trainer.backend.load(str(folder))
                started = time.perf_counter()
                trajectories = trainer.play_evaluation(tasks, n)
                result = {"step": step, "checkpoint": None if folder is None else str(folder),
                          **summarize(trajectories, samples=samples), "time_s": time.perf_counter() - started}
                results.append(result)
                bar.update(advance=1)
        finally:  # what Trainer.run closes, less the trackers (it has none here)
            trainer.rollout_executor.close()
            trainer.envs.close()
            trainer.executor.shutdown(wait=False, cancel_futures=True)
    document = {"run_dir": str(target.run_dir), "settings": _settings(config, split, n, samples), "checkpoints": results}
    document = _merge(target.run_dir / RESULTS_FILE, document)
    _write_json(target.run_dir / RESULTS_FILE, document)
    if json_path is not None:
        _write_json(Path(json_path), document)
    if log_trackers:
        log_to_trackers(config, target.run_dir, results, split, plugin_manager)
    return document


def _merge(path: Path, document: dict[str, Any]) -> dict[str, Any]:
    """Keep an earlier file's checkpoints that were not re-evaluated, when it used the same settings."""
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        return document
    if previous.get("settings") != document["settings"]:
        return document
    fresh = {r["step"] for r in document["checkpoints"]}
    kept = [r for r in previous.get("checkpoints", []) if r.get("step") not in fresh]
    return {**document, "checkpoints": sorted(kept + document["checkpoints"], key=lambda r: r["step"])}


def _write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(document, indent=1) + "\n")
    os.replace(tmp, path)


def log_to_trackers(config: RunConfig, run_dir: Path, results: Sequence[dict[str, Any]], split: str,
                    plugin_manager: Any = None) -> None:
    """``ckpt_eval/...`` (``ckpt_eval_train/...`` for the train split) at each checkpoint's
    step, to every tracker of the run's config that keeps a record (not to display-only
    ones such as ``console``); a failing tracker is skipped with a warning, as during training."""
    from agent_lightning.loop.trainer import Trackers
    from agent_lightning.plugins import create_component, get_plugin_manager
    from agent_lightning.types import Tracker, optional

    pm = plugin_manager or get_plugin_manager()
    prefix = "ckpt_eval" if split == "eval" else f"ckpt_eval_{split}"
    named = []
    registry = pm.registries["tracker"]
    for t in config.trackers:
        if t.name in registry and optional(registry.get(t.name).factory, Tracker, "display_only", False):
            continue  # declared on the registered class: not even created
        try:
            named.append((t.name, create_component(pm, "tracker", f"trackers[{t.name}]", t.name, run_dir=str(run_dir),
                                                   **t.options)))
        except Exception as exc:  # noqa: BLE001 - results are already on disk; a tracker never stops the command
            import warnings

            warnings.warn(f"tracker '{t.name}' could not be created ({type(exc).__name__}: {exc}); eval results not logged there",
                          stacklevel=2)
    trackers = Trackers(named)
    try:
        for result in results:
            trackers.log_metrics(int(result["step"]), tracker_metrics(result, prefix))
        trackers.log_artifact(str(run_dir / RESULTS_FILE), "eval/results.json")
    finally:
        trackers.close()


# ----------------------------------------------------------------------------- terminal


def _ci(result: dict[str, Any]) -> str:
    low, high = result["success_ci"]
    return f"[{low:.3f}, {high:.3f}]"


def results_table(document: dict[str, Any]) -> Any:
    """A rich table: one row per checkpoint (base first), the columns of ``summarize``."""
    from rich.table import Table

    settings = document["settings"]
    ks = sorted({int(k) for r in document["checkpoints"] for k in r["pass_at_k"]})
    table = Table(title=f"{settings['environment']['name']} / {settings['split']}: {settings['episodes']} episodes "
                        f"per checkpoint, eval_temperature {settings['eval_temperature']:g}")
    for column in ("checkpoint", "success", "95% CI", "mean reward", *(f"pass@{k}" for k in ks),
                   "turns", "tokens/ep", "failed"):
        table.add_column(column, justify="left" if column == "checkpoint" else "right", no_wrap=True)
    for r in document["checkpoints"]:
        name = "base (step 0)" if r["step"] == 0 else f"step {r['step']}"
        table.add_row(name, f"{r['success_rate']:.3f}", _ci(r), f"{r['mean_reward']:.3f}",
                      *(f"{r['pass_at_k'][str(k)]:.3f}" if str(k) in r["pass_at_k"] else "" for k in ks),
                      f"{r['mean_turns']:.2f}", f"{r['tokens_per_episode']:.1f}", str(r["failed_episodes"]))
    return table


def outcomes_table(document: dict[str, Any]) -> Any:
    """Why episodes did not succeed: one row per reason, one column per checkpoint."""
    from rich.table import Table

    rows = document["checkpoints"]
    reasons = sorted({reason for r in rows for reason in r["outcomes"]}, key=lambda s: (s != "no success", s))
    table = Table(title="unsuccessful episodes by reason")
    table.add_column("reason")
    for r in rows:
        table.add_column("base" if r["step"] == 0 else f"step {r['step']}", justify="right")
    for reason in reasons:
        table.add_row(reason, *(str(r["outcomes"].get(reason, 0)) for r in rows))
    return table


def gain_line(document: dict[str, Any]) -> str | None:
    """``base -> step N: success a [lo, hi] -> b [lo, hi]`` when there is more than the base."""
    rows = document["checkpoints"]
    if len(rows) < 2 or rows[0]["step"] != 0:
        return None
    base, last = rows[0], rows[-1]
    return (f"success, base -> step {last['step']}: {base['success_rate']:.3f} {_ci(base)} -> "
            f"{last['success_rate']:.3f} {_ci(last)} (95% Wilson intervals, {last['episodes']} episodes each)")
