"""The training loop.

    for step in steps:
        tasks   = sampler.next(batch_size)                  # seeded, resumable
        trajs   = rollout(backend, envs, tasks x group_size) # fault-isolated per episode
        trajs   = score(trajs, reward)                      # NaN/inf/raise -> failed episode
        batch   = algorithm.prepare(trajs)                  # advantages via ops, packed
        metrics = algorithm.update(backend, batch)
        trackers.log(step, metrics); maybe eval; maybe checkpoint (atomic)

Step 0 is the policy before any update: it is evaluated, as is the final step.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from agent_lightning import progress
from agent_lightning.config import ConfigError, RunConfig, dump_yaml
from agent_lightning.loop import checkpoint as ckpt
from agent_lightning.loop import stopping
from agent_lightning.loop.batch import check_invariants
from agent_lightning.loop.env_threads import EnvThreadPool
from agent_lightning.loop.heap import frozen_long_lived
from agent_lightning.loop.replay import ReplayBuffer
from agent_lightning.loop.rollout import EnvPool
from agent_lightning.loop.sampler import TaskSampler
from agent_lightning.loop.scoring import episode_metrics, score
from agent_lightning.metrics import truncate_metrics
from agent_lightning.plugins import PluginManager, create_component, get_plugin_manager
from agent_lightning.scaling import distributed
from agent_lightning.scaling.executors import create_executor
from agent_lightning.types import Algorithm, Backend, Task, Tracker, Trajectory, optional

log = logging.getLogger("agent_lightning")


class TrainingAborted(RuntimeError):
    """The run cannot go on: too many failed episodes in a step (``trainer.max_failure_rate``),
    too many non-finite updates in a row (``trainer.max_skipped_updates``), or a checkpoint
    that could not be written (``trainer.checkpoint_errors: abort``)."""


@dataclass
class RunResult:
    """How a run ended. ``stopped_by`` is the signal number when SIGTERM/SIGINT stopped it
    early (``checkpoint`` is then the checkpoint to resume from)."""

    run_dir: Path
    steps: int
    first_eval: dict[str, float]
    last_eval: dict[str, float]
    stopped_by: int | None = None
    checkpoint: Path | None = None


class Trackers:
    """Fans out to every tracker; a tracker that raises is disabled with a warning naming it."""

    def __init__(self, named: Sequence[tuple[str, Any]]):
        self.named = list(named)

    def _each(self, method: str, *args: Any, declared_optional: bool = False) -> None:
        for name, tracker in list(self.named):
            call = optional(tracker, Tracker, method) if declared_optional else getattr(tracker, method)
            if call is None:
                continue  # an optional method the tracker does not have
            try:
                call(*args)
            except Exception as exc:  # noqa: BLE001 - a tracker never stops training
                warnings.warn(f"tracker '{name}' failed in {method} ({type(exc).__name__}: {exc}); it is disabled for the rest of the run",
                              stacklevel=2)
                self.named.remove((name, tracker))

    def log_config(self, config: dict[str, Any]) -> None:
        self._each("log_config", config)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self._each("log_metrics", step, metrics)

    def log_artifact(self, path: str, name: str | None = None) -> None:
        self._each("log_artifact", path, name)

    def resume(self, step: int) -> None:
        """The run continues from the checkpoint at ``step`` (called before ``log_config``)."""
        self._each("resume", step, declared_optional=True)

    def log_trajectories(self, step: int, records: list[dict[str, Any]]) -> None:
        """The step's sampled trajectories, as written to ``trajectories/step-N.jsonl``."""
        self._each("log_trajectories", step, records, declared_optional=True)

    def log_checkpoint(self, step: int, path: str) -> None:
        """A checkpoint folder was published."""
        self._each("log_checkpoint", step, path, declared_optional=True)

    def close(self) -> None:
        self._each("close")


class Trainer:
    """Owns one run: its components, its directory, its loop."""

    def __init__(self, config: RunConfig, run_dir: str | Path, *, plugin_manager: PluginManager | None = None):
        self.config = config
        self.run_dir = run_dir = Path(run_dir)
        self.pm = plugin_manager or get_plugin_manager()
        c = config
        distributed.init(c.trainer.distributed, device=c.backend.device)  # a no-op unless launched by torchrun
        # Cheap components first, so that configuration mistakes surface before the model loads.
        self.env_factory = (lambda: create_component(self.pm, "environment", "environment", c.environment.name,
                                                     **c.environment.options)) if c.environment is not None else None
        probe = self.env_factory() if self.env_factory is not None else None
        if c.agent is not None:  # an existing agent through the policy endpoint (agent_lightning.agents)
            from agent_lightning.agents.tasks import run_tasks

            self.train_tasks, self.eval_tasks = run_tasks(c.agent, probe, c.trainer.seed)
        else:
            self.train_tasks: list[Task] = list(probe.tasks("train"))
            self.eval_tasks: list[Task] = list(probe.tasks("eval"))
        self.reward = create_component(self.pm, "reward", "reward", c.reward.name, **c.reward.options)
        self.algorithm = create_component(self.pm, "algorithm", "algorithm", c.algorithm.name, **c.algorithm.options)
        run_dir.mkdir(parents=True, exist_ok=True)
        tracker_objs = [(t.name, create_component(self.pm, "tracker", f"trackers[{t.name}]", t.name, run_dir=str(run_dir), **t.options))
                        for t in (c.trackers if distributed.is_main() else [])]  # rank 0 logs
        self.trackers = Trackers(tracker_objs)
        self.envs = EnvPool(self.env_factory)
        if probe is not None:
            self.envs.instances.append(probe)
        self._seed_everything(c.trainer.seed)
        with progress.task(progress.model_label(c.model)):
            self.backend = create_component(self.pm, "backend", "backend", c.backend.name, c.model, c.backend, seed=c.trainer.seed)
        if c.sampling.noise == "counter" and not optional(self.backend, Backend, "counter_noise", False):
            raise ConfigError(f"sampling.noise: the '{c.backend.name}' backend cannot sample with counter noise; "
                              "use sampling.noise=generator")
        self.roles = list(c.agent.roles) if c.agent is not None else []
        for name, role in (c.agent.roles.items() if c.agent is not None else ()):  # a LoRA adapter per agent role
            add_role = optional(self.backend, Backend, "add_role")
            if add_role is None:
                raise ConfigError(f"agent.roles: the '{c.backend.name}' backend cannot train an adapter per role")
            add_role(name, role.lora)
        distributed.prepare_backend(self.backend, self.algorithm)  # rank 0's weights everywhere; FSDP wrapping
        # With agent roles every step updates each role's adapter: the schedule sees that many steps.
        self.algorithm.setup(self.backend, total_steps=c.trainer.steps * max(1, len(self.roles)),
                             temperature=c.sampling.temperature)
        self.sampler = TaskSampler(self.train_tasks, c.trainer.seed)
        self.group_size = int(self.algorithm.group_size)
        self.executor = EnvThreadPool(max_workers=8, name="env")
        self.rollout_executor = create_executor(c, backend=self.backend, envs=self.envs, threads=self.executor,
                                                plugin_manager=self.pm)
        self.step = 0
        self.replay = ReplayBuffer(c.trainer.replay, seed=c.trainer.seed, temperature=c.sampling.temperature)

    def describe(self) -> dict[str, Any]:
        """What this run is made of: model size, device, and the log-prob path used."""
        from agent_lightning.ops import dispatch
        from agent_lightning.ops.logprobs import IMPLEMENTED

        info = dict(self.backend.describe())
        device = str(info.get("model/device", "cpu")).split(":")[0]
        path = dispatch.select("token_logprobs", device, IMPLEMENTED)
        info["ops/token_logprobs"] = {"triton": "fused Triton kernel", "torch": "fused chunked torch"}.get(path, path)
        return info

    @staticmethod
    def _seed_everything(seed: int) -> None:
        """Seed the global RNGs that model creation and LoRA initialisation draw from."""
        import torch

        random.seed(seed)
        torch.manual_seed(seed)

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoints/step-<step>`` (rank 0 writes, every rank takes part).

        A write that fails (a full disk) leaves the earlier checkpoints intact; it aborts the
        run with ``TrainingAborted`` (``trainer.checkpoint_errors: abort``) or, with ``warn``,
        logs a warning and returns ``None``.
        """
        def write(folder: Path) -> None:
            import torch

            self.backend.save(str(folder))
            ckpt.save_state({"sampler": self.sampler.state_dict(), "python_random": random.getstate(),
                             "torch_rng": torch.random.get_rng_state(),
                             "algorithm": self.algorithm.state_dict(), "replay": self.replay.state_dict()},
                            folder / "trainer_state")
            (folder / "trainer.json").write_text(json.dumps({"step": self.step}))

        failure = None
        with progress.task(f"writing checkpoint step-{self.step}"), distributed.checkpoint_state(self.backend):
            if distributed.is_main():  # rank 0 writes; the others wait for it
                try:
                    ckpt.write_checkpoint(self.run_dir, self.step, write, self.config.trainer.keep_checkpoints)
                except ckpt.CheckpointWriteError as exc:
                    failure = str(exc)
        failure = distributed.broadcast_object(failure)  # rank 0's outcome, on every rank
        if failure is None:
            return ckpt.checkpoint_dir(self.run_dir) / f"step-{self.step}"
        previous = self._last_good_checkpoint()
        kept = f"the last good checkpoint is {previous}" if previous else "no earlier checkpoint exists"
        if self.config.trainer.checkpoint_errors == "warn":
            log.warning("%s; training goes on (trainer.checkpoint_errors=warn); %s", failure, kept)
            return None
        raise TrainingAborted(f"{failure}; {kept}")

    def restore(self) -> bool:
        """Continue from the run directory's latest checkpoint; False when there is none."""
        import torch

        found = distributed.broadcast_object(self._pick_checkpoint())  # rank 0's choice (or its error)
        if isinstance(found, str):
            raise ckpt.CheckpointError(found)
        if found is None:
            return False
        step, folder = found
        distributed.load_backend(self.backend, folder)
        state = ckpt.load_state(folder / "trainer_state")
        self.sampler.load_state_dict(state["sampler"])
        random.setstate(state["python_random"])
        torch.random.set_rng_state(state["torch_rng"])
        self.algorithm.load_state_dict(state["algorithm"])
        self.replay.load_state_dict(state.get("replay"))
        self.step = step
        if distributed.is_main():
            truncate_metrics(self.run_dir, step)
        return True

    def _last_good_checkpoint(self) -> Path | None:
        """The newest intact checkpoint, for an abort message (rank 0 looks; ``None`` elsewhere,
        and when there is none)."""
        if not distributed.is_main():
            return None
        try:
            found = ckpt.latest_checkpoint(self.run_dir)
        except ckpt.CheckpointError:
            return None
        return found[1] if found else None

    def _pick_checkpoint(self) -> tuple[int, Path] | str | None:
        """Rank 0's choice of checkpoint to resume from: the newest intact one (damaged newer
        ones are moved aside to ``checkpoints/.damaged-step-N`` so that later saves and
        resumes never meet them), ``None`` when there is none, or the error as text."""
        if not distributed.is_main():
            return None
        try:
            found = ckpt.latest_checkpoint(self.run_dir)
        except ckpt.CheckpointError as exc:
            return str(exc)
        for step, folder in ckpt.list_checkpoints(self.run_dir):
            if found is not None and step > found[0]:
                aside = folder.with_name(f".damaged-{folder.name}")
                n = 1
                while aside.exists():
                    n += 1
                    aside = folder.with_name(f".damaged-{folder.name}-{n}")
                folder.replace(aside)
                log.warning("moved the damaged checkpoint %s aside to %s", folder, aside)
        return found

    # ------------------------------------------------------------------ episodes

    def _play(self, jobs: list[tuple[str, Task, int]], temperature: float, seed: str | None = None) -> list[Trajectory]:
        """Play through ``trainer.executor``; sampling noise is keyed by ``seed`` (default:
        this training step's key), per episode and turn (``rollout.episode_seed``)."""
        seed = f"{self.config.trainer.seed}/train/{self.step}" if seed is None else seed
        with distributed.sampling_weights(self.backend):  # FSDP: whole layers while sampling
            trajectories = self.rollout_executor.play(distributed.shard(jobs), temperature=temperature, seed=seed)  # this rank's share
        check_invariants(trajectories, vocab_size=self.backend.vocab_size, decode=self.backend.decode)
        return distributed.gather(score(trajectories, self.reward))  # every rank's, in job order

    def evaluate(self) -> dict[str, float]:
        """Held-out episodes with fixed sampling noise (the same at every evaluation)."""
        held_out = optional(self.algorithm, Algorithm, "held_out_metrics")  # an algorithm's own (offline DPO)
        extra = {f"eval/{k}": v for k, v in held_out(self.backend).items()} if held_out else {}
        if not self.eval_tasks:
            return extra
        started = time.perf_counter()
        trajs = self.play_evaluation(self.eval_tasks, self.config.trainer.eval_episodes)
        metrics = episode_metrics(trajs, "eval")
        if self.config.agent is not None:  # the endpoint's counters of these episodes: eval/agent/calls...
            metrics.update({f"eval/{k}": v for k, v in self.rollout_executor.metrics().items()})
        for role in self.roles:  # each role's own calls, as if they were episodes of their own
            mine = [t for t in trajs if t.info.get("role") == role]
            metrics.update(episode_metrics(mine, f"eval/{role}") if mine else {})
        metrics["eval/time_s"] = time.perf_counter() - started
        return {**metrics, **extra}

    def play_evaluation(self, tasks: Sequence[Task], episodes: int) -> list[Trajectory]:
        """``episodes`` scored episodes dealt round-robin over ``tasks`` at ``sampling.eval_temperature``,
        with the evaluation's fixed sampling noise (``alightning eval`` plays these too)."""
        jobs = [(f"eval-{i}/{tasks[i % len(tasks)].id}", tasks[i % len(tasks)], i) for i in range(episodes)]
        return self._play(jobs, self.config.sampling.eval_temperature, seed=f"{self.config.trainer.seed}/eval")

    def _write_trajectories(self, trajectories: Sequence[Trajectory]) -> None:
        keep = self.config.trainer.log_trajectories
        if not keep or not distributed.is_main():
            return
        folder = self.run_dir / "trajectories"
        folder.mkdir(exist_ok=True)
        records = []
        render = optional(self.backend, Backend, "render", self.backend.decode)  # special tokens shown
        with open(folder / f"step-{self.step}.jsonl", "w") as handle:
            for traj in trajectories[:keep]:
                record = {
                    "id": traj.id, "task": traj.task.id, "reward": traj.final_reward, "success": traj.success,
                    "failure": traj.failure, "policy_version": traj.policy_version,
                    "prompt": render(list(traj.prompt_token_ids)),
                    "turns": [{"action": t.action, "reward": t.reward,
                               "observation": render(list(t.observation_token_ids))}
                              for t in traj.turns],
                    "token_ids": traj.token_ids,
                    "policy_mask": [int(m) for m in traj.policy_mask],
                }
                if "episode" in traj.info:  # an agent episode: its segment, and where and why history broke
                    record["agent"] = {k: traj.info[k] for k in ("episode", "segment", "segments", "role", "breaks",
                                                                 "calls", "retried_calls", "answer") if k in traj.info}
                    record["agent"]["call_rewards"] = [t.info.get("call_reward") for t in traj.turns]
                handle.write(json.dumps(record) + "\n")
                records.append(record)
        self.trackers.log_trajectories(self.step, records)

    # ------------------------------------------------------------------ loop

    def train_step(self) -> dict[str, float]:
        c = self.config
        started = time.perf_counter()
        if not optional(self.algorithm, Algorithm, "uses_rollouts", True):  # offline (DPO on a preference file)
            update = self.algorithm.offline_step(self.backend)
            self.step += 1
            return {**{f"train/{k}": v for k, v in update.items()}, "time/update_s": time.perf_counter() - started}
        tasks = self.sampler.next(c.trainer.batch_size)
        jobs = [(f"{task.id}/{k}", task, g) for g, task in enumerate(tasks) for k in range(self.group_size)]
        trajectories = self._play(jobs, c.sampling.temperature)
        rollout_s = time.perf_counter() - started
        metrics = episode_metrics(trajectories, "train")
        metrics["train/reward_mean"] = metrics.pop("train/mean_reward")
        metrics.update(self.rollout_executor.metrics())  # e.g. rollout/worker_deaths (ray)
        failed = [t for t in trajectories if t.failure is not None]
        if len(failed) > c.trainer.max_failure_rate * len(trajectories):
            reasons = sorted({t.failure for t in failed})[:3]
            raise TrainingAborted(
                f"step {self.step + 1}: {len(failed)} of {len(trajectories)} episodes failed, more than "
                f"trainer.max_failure_rate={c.trainer.max_failure_rate}; reasons: {'; '.join(reasons)}"
            )
        for traj in failed:
            log.warning("episode %s failed: %s", traj.id, traj.failure)
        update_started = time.perf_counter()
        if self.roles:  # agent roles: each role's adapter on its own calls
            update = self._update_roles(trajectories, metrics)
        else:
            mixed = self.replay.mix(trajectories, self.backend, self.step)  # fresh + replayed groups (fresh when off)
            update = self._update(self.replay.weigh(self.algorithm.prepare(mixed), self.backend), metrics)
        update_s = time.perf_counter() - update_started
        self.step += 1
        metrics.update({f"train/{k}": v for k, v in update.items()})
        metrics.update(self.replay.metrics)
        metrics["time/rollout_s"] = rollout_s
        metrics["time/update_s"] = update_s
        tokens = sum(len(t.token_ids) for t in trajectories)
        metrics["train/tokens_per_s"] = tokens / max(1e-9, time.perf_counter() - started)
        self._write_trajectories(trajectories)
        return metrics

    def _update(self, batch: Any, metrics: dict[str, float]) -> dict[str, float]:
        """The algorithm's update on ``batch`` (re-weighed first by a backend whose sampler is
        another engine: truncated importance sampling, metrics added to ``metrics``)."""
        correct = optional(self.backend, Backend, "correct_sampler_mismatch")  # an external sampler (vLLM)
        if correct is not None:
            batch, sampler_metrics = correct(batch, temperature=self.config.sampling.temperature)
            metrics.update(sampler_metrics)
        return dict(self.algorithm.update(self.backend, batch))

    def _update_roles(self, trajectories: Sequence[Trajectory], metrics: dict[str, float]) -> dict[str, float]:
        """One update per agent role, on that role's calls, with its adapter active. Metrics are
        ``<role>/<key>``; the update counters (``updates``, ``skipped_updates``,
        ``trailing_skipped_updates``) are summed for the non-finite guard."""
        use_role = optional(self.backend, Backend, "use_role")
        out: dict[str, float] = {}
        for role in self.roles:
            mine = [t for t in trajectories if t.info.get("role") == role]
            use_role(role)
            update = self._update(self.algorithm.prepare(mine), metrics) if mine else {}
            for key, value in update.items():
                if key in ("updates", "skipped_updates", "trailing_skipped_updates"):
                    out[key] = out.get(key, 0.0) + value
                else:
                    out[f"{role}/{key}"] = value
        use_role(self.roles[0])
        return out

    def _out_of_time(self, started: float) -> bool:
        """Whether ``trainer.time_limit_s`` has passed (rank 0's clock decides for every rank)."""
        limit = self.config.trainer.time_limit_s
        if limit is None:
            return False
        return bool(distributed.broadcast_object(time.perf_counter() - started > limit))

    def run(self, *, resume: bool = False, until_step: int | None = None,
            signals: stopping.StopSignal | None = None) -> RunResult:
        """Train to ``trainer.steps`` (or stop after ``until_step``, checkpointing there so
        that ``--resume`` continues exactly: preemptible schedules use this).

        SIGTERM / SIGINT (``signals``, already installed by the caller so that a signal during
        start-up counts too; else installed here) stop the run after the current step with a
        checkpoint; ``RunResult.stopped_by`` then names the signal.
        """
        c = self.config
        stop = c.trainer.steps if until_step is None else min(until_step, c.trainer.steps)
        if distributed.is_main():
            (self.run_dir / "config.yaml").write_text(dump_yaml(c))
            (self.run_dir / "run_info.json").write_text(json.dumps(self.describe(), indent=1))
        first_eval: dict[str, float] = {}
        last_eval: dict[str, float] = {}
        stopped_by: int | None = None
        saved: Path | None = None
        try:
            resumed = self.restore() if resume else False
            if resumed:
                self.trackers.resume(self.step)
            self.trackers.log_config(c.to_dict())
            with (contextlib.nullcontext(signals) if signals else stopping.StopSignal(distributed.is_main()) as signals,
                  frozen_long_lived()):
                if not resumed:
                    if stopped_by := self._stop_signal(signals):  # during start-up: nothing to save yet
                        return RunResult(self.run_dir, self.step, {}, {}, stopped_by, None)
                    first_eval = last_eval = self.evaluate()
                    self.trackers.log_metrics(0, first_eval)
                started = time.perf_counter()
                skipped_in_a_row = 0
                while self.step < stop and not (stopped_by := self._stop_signal(signals)):
                    metrics = self.train_step()
                    skipped_in_a_row = self._guard_updates(metrics, skipped_in_a_row)
                    final = self.step == c.trainer.steps or self._out_of_time(started)
                    if final and self.step < stop:
                        log.warning("trainer.time_limit_s=%s reached after step %d: final evaluation and checkpoint now",
                                    c.trainer.time_limit_s, self.step)
                        stop = self.step
                    if (c.trainer.eval_every and self.step % c.trainer.eval_every == 0) or final:
                        last_eval = self.evaluate()
                        metrics.update(last_eval)
                    self.trackers.log_metrics(self.step, metrics)
                    saved = None
                    if (c.trainer.checkpoint_every and self.step % c.trainer.checkpoint_every == 0) or self.step == stop:
                        saved = self._checkpoint()
                if stopped_by and saved is None:  # stopped early: the step just finished is saved
                    saved = self._checkpoint()
        finally:
            self.trackers.close()
            self.rollout_executor.close()
            self.envs.close()
            self.executor.shutdown(wait=False, cancel_futures=True)
        return RunResult(self.run_dir, self.step, first_eval, last_eval, stopped_by or None, saved)

    def _checkpoint(self) -> Path | None:
        saved = self.save_checkpoint()
        if saved is not None:
            self.trackers.log_checkpoint(self.step, str(saved))
        return saved

    @staticmethod
    def _stop_signal(signals: stopping.StopSignal) -> int:
        """The stop signal any rank received (0: none): every rank stops after the same step."""
        return distributed.max_over_ranks(signals.signum or 0)

    def _guard_updates(self, metrics: dict[str, float], in_a_row: int) -> int:
        """Log this step's skipped (non-finite) updates; abort past ``trainer.max_skipped_updates``
        in a row. Returns the updated count of skips in a row."""
        updates = int(metrics.pop("train/updates", 0))
        trailing = int(metrics.pop("train/trailing_skipped_updates", 0))
        skipped = int(metrics.get("train/skipped_updates", 0))
        if not skipped:
            return 0
        in_a_row = in_a_row + trailing if trailing == updates else trailing
        log.warning("step %d: %d of %d optimizer updates skipped (non-finite loss or gradient norm)",
                    self.step, skipped, updates)
        limit = self.config.trainer.max_skipped_updates
        if in_a_row > limit:
            found = self._last_good_checkpoint()
            kept = f"the last good checkpoint is {found}" if found else "no checkpoint was written yet"
            raise TrainingAborted(f"step {self.step}: {in_a_row} optimizer updates in a row had a non-finite loss or "
                                  f"gradient norm (more than trainer.max_skipped_updates={limit}); {kept}")
        return in_a_row
