"""Playing episodes: batched multi-turn rollouts, token-in/token-out, fault-isolated.

All active episodes advance in lockstep: one batched ``generate`` per turn, then every
environment steps on the decoded action (in a thread pool, each step under a timeout; an
environment that declares ``inline = True`` is stepped in the loop's own thread).
The sequence trained on is the prompt's tokens, then for each turn the sampled ids and
the observation's tokens — the decoded text goes to the environment, never back into
the token stream. An episode whose environment raises or times out is ended and marked
failed with the reason; the others go on.
"""

from __future__ import annotations

import concurrent.futures as futures
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from agent_lightning import progress
from agent_lightning.config import SamplingConfig
from agent_lightning.types import Backend, Environment, NoiseKeys, Observation, StepResult, Task, Trajectory, Turn


@dataclass
class _Episode:
    id: str
    task: Task
    group: int
    env_slot: int
    prompt: list[int] = field(default_factory=list)
    context: list[int] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)
    done: bool = False
    success: bool = False
    failure: str | None = None


class EnvPool:
    """Environment instances reused across steps; one per concurrent episode.

    An instance that raised or hung is closed (best effort) and replaced, since its state
    is unknown.
    """

    def __init__(self, factory: Callable[[], Environment]):
        self.factory = factory
        self.instances: list[Environment] = []

    def ensure(self, count: int) -> None:
        while len(self.instances) < count:
            self.instances.append(self.factory())

    def replace(self, slot: int) -> None:
        try:
            self.instances[slot].close()
        except Exception:
            pass
        self.instances[slot] = self.factory()

    def close(self) -> None:
        for env in self.instances:
            try:
                env.close()
            except Exception:
                pass
        self.instances.clear()


def _failure_text(stage: str, exc: BaseException) -> str:
    if isinstance(exc, futures.TimeoutError):
        return f"environment {stage} timed out"
    return f"environment {stage} raised {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")


def runs_inline(env: Environment) -> bool:
    """Whether ``env`` declares ``inline = True``: its ``reset``/``step`` are quick pure-Python
    calls that never block, so the loop makes them itself instead of handing each to a worker
    thread (a thread hand-off per call costs tens of microseconds, more than such a step; there
    is then no step timeout to enforce). Errors still fail only their episode."""
    return getattr(env, "inline", False) is True


def _call_inline(fn: Callable[[Any], Any], arg: Any) -> futures.Future:
    """``fn(arg)`` called now, its result or exception held in a finished future."""
    future: futures.Future = futures.Future()
    try:
        future.set_result(fn(arg))
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - reported by run_all like a worker thread's error
        future.set_exception(exc)
    return future


def episode_seed(base: str | int, episode_id: str, turn: int) -> int:
    """The 63-bit sampling seed of one episode's turn under the seed key ``base``.

    Sampling noise then depends only on (key, episode id, turn), never on which other
    episodes share the batch, the worker or the rank, nor on how often the episode was
    retried.
    """
    digest = hashlib.blake2b(f"{base}|{episode_id}|{turn}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _messages_key(messages: Any) -> str | None:
    """A canonical text of chat messages (equal messages, equal key); ``None`` when they do not
    serialise to JSON, and are then encoded without sharing."""
    try:
        return json.dumps(messages, sort_keys=True, ensure_ascii=False)
    except (TypeError, ValueError):
        return None


def turn_noise(seeds: Sequence[int], noise: str) -> Any:
    """The ``generate`` noise of rows with these per-turn seeds: one ``torch.Generator`` each
    (``sampling.noise: generator``) or :class:`NoiseKeys` (``counter``)."""
    if noise == "counter":
        return NoiseKeys(tuple(seeds))
    import torch

    return [torch.Generator().manual_seed(s) for s in seeds]


def play(
    backend: Backend,
    envs: EnvPool,
    jobs: Sequence[tuple[str, Task, int]],
    *,
    sampling: SamplingConfig,
    temperature: float,
    step_timeout_s: float,
    policy_version: int,
    generator: Any = None,
    executor: futures.Executor,
    seed: str | int | None = None,
) -> list[Trajectory]:
    """Play one episode per ``(episode id, task, group)`` job and return their trajectories.

    With ``seed`` (a seed key such as ``"0/train/12"``) every episode's turn samples from
    its own noise keyed by ``episode_seed(seed, episode id, turn)`` (``turn_noise``), and ``generator``
    is ignored; without it, all episodes draw from ``generator`` (the backend's default).
    Returned trajectories carry ``final_reward = 0``; rewards are scored afterwards.
    """
    envs.ensure(len(jobs))
    episodes = [_Episode(id=eid, task=task, group=group, env_slot=i) for i, (eid, task, group) in enumerate(jobs)]

    def run_all(stage: str, calls: list[tuple[_Episode, Callable[[Any], Any], Any]]) -> list[tuple[_Episode, Any]]:
        submitted = [(ep, _call_inline(fn, arg) if runs_inline(envs.instances[ep.env_slot])
                      else executor.submit(fn, arg)) for ep, fn, arg in calls]
        results = []
        for ep, future in submitted:
            try:
                results.append((ep, future.result(timeout=step_timeout_s)))
            except KeyboardInterrupt:  # Ctrl-C (a second SIGINT) while waiting here: stop the run
                raise
            except BaseException as exc:  # noqa: BLE001 - any environment error fails this episode only
                ep.failure, ep.done = _failure_text(stage, exc), True
                envs.replace(ep.env_slot)
        return results

    encoded: dict[str, list[int]] = {}  # a group's episodes start from the same messages: encode them once
    for ep, obs in run_all("reset", [(ep, envs.instances[ep.env_slot].reset, ep.task) for ep in episodes]):
        try:
            if not isinstance(obs, Observation):
                raise TypeError(f"reset() returned {type(obs).__name__}, expected Observation")
            key = _messages_key(obs.messages)
            prompt = encoded.get(key) if key is not None else None
            if prompt is None:
                prompt = list(backend.encode_prompt(obs.messages))
                if key is not None:
                    encoded[key] = prompt
            ep.prompt = list(prompt)
            ep.context = list(ep.prompt)
        except Exception as exc:
            ep.failure, ep.done = f"prompt could not be encoded: {type(exc).__name__}: {exc}", True

    budget = sampling.max_context_tokens
    for turn in progress.track(range(sampling.max_turns), f"playing {len(episodes)} episodes (turns)"):
        active = [ep for ep in episodes if not ep.done]
        if not active:
            break
        if seed is not None:
            generator = turn_noise([episode_seed(seed, ep.id, turn) for ep in active], sampling.noise)
        # Stop strings are passed only when set, so backends without the option still work.
        stop_kw = {"stop": tuple(sampling.stop)} if sampling.stop else {}
        generations = backend.generate([ep.context for ep in active], temperature=temperature,
                                       top_p=sampling.top_p, max_new_tokens=sampling.max_new_tokens,
                                       generator=generator, **stop_kw)
        actions = {ep.id: (gen, backend.decode(gen.token_ids)) for ep, gen in zip(active, generations)}
        stepped = run_all("step", [(ep, envs.instances[ep.env_slot].step, actions[ep.id][1]) for ep in active])
        for ep, result in stepped:
            gen, action = actions[ep.id]
            if not isinstance(result, StepResult):
                ep.failure, ep.done = f"step() returned {type(result).__name__}, expected StepResult", True
                continue
            last_turn = turn == sampling.max_turns - 1
            finished = result.done or last_turn or result.observation is None
            obs_ids: list[int] = []
            if not finished:
                try:
                    obs_ids = backend.encode_observation(result.observation.messages,
                                                         after_stop=gen.finish_reason == "stop")
                except Exception as exc:
                    ep.failure = f"observation could not be encoded: {type(exc).__name__}: {exc}"
                    finished = True
            ep.turns.append(Turn(action=action, action_token_ids=gen.token_ids, action_logprobs=gen.logprobs,
                                 observation_token_ids=tuple(obs_ids), reward=float(result.reward),
                                 info=dict(result.info)))
            ep.context.extend(gen.token_ids)
            ep.context.extend(obs_ids)
            if result.done:
                ep.success = bool(result.info.get("success", False))
            if len(ep.context) + sampling.max_new_tokens > budget:
                finished = True
            ep.done = finished
        # Episodes failed during this turn's step keep the turns they completed before.

    return [
        Trajectory(id=ep.id, task=ep.task, group=ep.group, prompt_token_ids=tuple(ep.prompt), turns=tuple(ep.turns),
                   success=ep.success, failure=ep.failure, policy_version=policy_version)
        for ep in episodes
    ]
