"""Core types shared by the loop and every plugin.

Components are described by Protocols (structural typing), never base classes: a plugin
satisfies ``Environment`` by having ``reset``/``step``/``close``/``tasks``, nothing more.
Values that cross component boundaries are frozen dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence, TypedDict, Union, runtime_checkable


class Message(TypedDict, total=False):
    """One chat message: ``{"role": "user" | "assistant" | "system" | "tool", "content": str}``."""

    role: str
    content: str
    name: str


SPLITS = ("train", "eval")
"""Task splits every environment provides: training and held-out evaluation."""


def check_split(environment: str, split: str) -> None:
    """Raise ``ValueError`` naming the environment when ``split`` is not a known split."""
    if split not in SPLITS:
        raise ValueError(f"{environment} has splits 'train' and 'eval', not '{split}'")


@dataclass(frozen=True)
class Task:
    """One dataset item.

    Attributes:
        id: Stable identifier, unique within its environment and split.
        prompt: The chat messages that open the episode (usually system + user).
        reference: Whatever the environment or reward needs to judge the episode
            (the secret number, the hidden tests, the expected answer...). Never shown
            to the policy.
        split: ``"train"`` or ``"eval"`` (held out from training).
    """

    id: str
    prompt: tuple[Message, ...]
    reference: Mapping[str, Any] = field(default_factory=dict)
    split: str = "train"


@dataclass(frozen=True)
class Observation:
    """What the environment shows the agent: chat messages appended to the conversation.

    ``reset`` usually returns ``Observation(task.prompt)``; ``step`` returns the feedback
    turn (a ``user`` or ``tool`` message).
    """

    messages: tuple[Message, ...]

    @classmethod
    def user(cls, text: str) -> "Observation":
        return cls(({"role": "user", "content": text},))


@dataclass(frozen=True)
class StepResult:
    """The environment's answer to one action.

    Attributes:
        observation: The next observation; ignored when ``done``.
        reward: Reward for this step (environments that only score the end return 0.0
            until the last step).
        done: Whether the episode is over.
        info: Free-form diagnostics; ``info["success"]`` (bool) is read by evaluation.
    """

    observation: Observation | None
    reward: float = 0.0
    done: bool = False
    info: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Turn:
    """One policy turn of an episode.

    Attributes:
        action: The decoded text of the sampled tokens, as handed to ``Environment.step``.
        action_token_ids: The sampled token ids (exactly what is trained on).
        action_logprobs: Sampling log-prob of each sampled token, ``len == len(action_token_ids)``.
        observation_token_ids: Tokens appended after the action (the environment's feedback
            rendered with the chat template); empty after the final turn.
        reward: The step reward returned by the environment.
        info: The environment's ``info`` for this step.
    """

    action: str
    action_token_ids: tuple[int, ...]
    action_logprobs: tuple[float, ...]
    observation_token_ids: tuple[int, ...] = ()
    reward: float = 0.0
    info: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Trajectory:
    """A whole episode and the token stream trained on.

    The token stream is ``prompt_token_ids`` followed, for each turn, by the turn's
    ``action_token_ids`` and then its ``observation_token_ids``. ``token_ids``,
    ``policy_mask``, ``sampling_logprobs`` and ``turn_index`` are that stream flattened;
    all four have the same length ``L``.

    Attributes:
        id: Episode id, unique within a step (``"<task id>/<sample index>"``).
        task: The task played.
        group: Index of the task's group within the step's batch (GRPO groups).
        turns: Every policy turn, in order.
        final_reward: The scalar reward used for training (after the reward plugin).
        reward_components: Named parts of ``final_reward`` when the reward is composite.
        success: Whether the environment reported success.
        failure: ``None`` for a healthy episode, else the reason it failed
            (environment exception, timeout, non-finite reward...). Failed episodes are
            masked from the loss.
        policy_version: Number of optimizer steps the policy had taken when it sampled.
    """

    id: str
    task: Task
    group: int
    prompt_token_ids: tuple[int, ...]
    turns: tuple[Turn, ...]
    final_reward: float = 0.0
    reward_components: Mapping[str, float] = field(default_factory=dict)
    success: bool = False
    failure: str | None = None
    policy_version: int = 0

    @property
    def token_ids(self) -> list[int]:
        out = list(self.prompt_token_ids)
        for turn in self.turns:
            out.extend(turn.action_token_ids)
            out.extend(turn.observation_token_ids)
        return out

    @property
    def policy_mask(self) -> list[bool]:
        out = [False] * len(self.prompt_token_ids)
        for turn in self.turns:
            out.extend([True] * len(turn.action_token_ids))
            out.extend([False] * len(turn.observation_token_ids))
        return out

    @property
    def sampling_logprobs(self) -> list[float]:
        out = [0.0] * len(self.prompt_token_ids)
        for turn in self.turns:
            out.extend(turn.action_logprobs)
            out.extend([0.0] * len(turn.observation_token_ids))
        return out

    @property
    def turn_index(self) -> list[int]:
        """Per token: the turn it belongs to (-1 for the prompt)."""
        out = [-1] * len(self.prompt_token_ids)
        for i, turn in enumerate(self.turns):
            out.extend([i] * (len(turn.action_token_ids) + len(turn.observation_token_ids)))
        return out

    @property
    def num_policy_tokens(self) -> int:
        return sum(len(t.action_token_ids) for t in self.turns)

    @property
    def step_rewards(self) -> list[float]:
        return [t.reward for t in self.turns]


@dataclass(frozen=True)
class RewardResult:
    """A reward made of named parts; ``value`` is their sum unless given."""

    components: Mapping[str, float]
    value: float | None = None

    @property
    def total(self) -> float:
        return float(sum(self.components.values())) if self.value is None else float(self.value)


@runtime_checkable
class Environment(Protocol):
    """A multi-step environment. One instance plays one episode at a time.

    Instances are created by the registered factory with the config's options
    (``environment.options``). The loop calls ``tasks`` once per split, then
    ``reset(task)`` / ``step(action)``... until ``done``, then ``close`` at the end of
    the run (``close`` must be idempotent).
    """

    def tasks(self, split: str) -> Sequence[Task]: ...

    def reset(self, task: Task) -> Observation: ...

    def step(self, action: str) -> StepResult: ...

    def close(self) -> None: ...


Reward = Callable[[Trajectory], Union[float, RewardResult]]
"""A reward: scores a finished trajectory. Registered as a factory
``factory(**options) -> Reward``. Raising or returning NaN/inf fails that episode only.
A reward may also have ``batch(trajectories) -> list`` (one value, or an exception instance
that fails that episode, per trajectory, in order), which the scorer then calls once for all
of a step's healthy episodes (batched models, concurrent requests)."""


@runtime_checkable
class Tracker(Protocol):
    """Receives the run's config, metrics and artifacts. Only rank 0 logs."""

    def log_config(self, config: Mapping[str, Any]) -> None: ...

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None: ...

    def log_artifact(self, path: str, name: str | None = None) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Generation:
    """One sampled continuation.

    Attributes:
        token_ids: Sampled ids, including the stop token when one ended it.
        logprobs: Log-prob of each sampled token under the temperature-scaled policy.
        finish_reason: ``"stop"`` (a stop token), ``"stop_string"`` (a ``sampling.stop``
            string, the turn is not closed yet) or ``"length"`` (max new tokens).
    """

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    finish_reason: str


class Backend(Protocol):
    """The policy: sampling, differentiable log-probs, optimizer steps, weights.

    See ``agent_lightning.backends.transformers_backend`` for the reference implementation.
    """

    def encode_prompt(self, messages: Sequence[Message]) -> list[int]: ...

    def encode_observation(self, messages: Sequence[Message], *, after_stop: bool) -> list[int]: ...

    def decode(self, token_ids: Sequence[int]) -> str: ...

    def generate(self, prompts: Sequence[Sequence[int]], *, temperature: float, top_p: float,
                 max_new_tokens: int, generator: Any = None, stop: Sequence[str] = ()) -> list[Generation]: ...

    def save(self, directory: str) -> None: ...

    def load(self, directory: str) -> None: ...


class Algorithm(Protocol):
    """Turns scored trajectories into policy updates.

    ``prepare`` computes advantages (through ``agent_lightning.ops``) and returns an
    algorithm-specific batch; ``update`` runs the optimisation on it and returns metrics.
    """

    def prepare(self, trajectories: Sequence[Trajectory]) -> Any: ...

    def update(self, backend: Backend, batch: Any) -> Mapping[str, float]: ...
