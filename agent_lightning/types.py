"""Core types shared by the loop and every plugin.

Components are described by Protocols (structural typing), never base classes: a plugin
satisfies ``Environment`` by having ``reset``/``step``/``close``/``tasks``, nothing more.
Values that cross component boundaries are frozen dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, Sequence, TypedDict, Union, runtime_checkable

if TYPE_CHECKING:
    from agent_lightning.loop.batch import PackedBatch


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


def check_names(option: str, chosen: str | Sequence[str], known: Sequence[str]) -> tuple[str, ...]:
    """``chosen`` (one name or a list) as a tuple, in order, each one of ``known``.

    Raises ``ValueError`` naming ``environment.<option>``, the unknown names and the known
    ones, or saying the list is empty (environment options such as ``families``, ``kinds``).
    """
    names = (chosen,) if isinstance(chosen, str) else tuple(chosen)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"environment.{option}: unknown {unknown} (known: {', '.join(known)})")
    if not names:
        raise ValueError(f"environment.{option}: empty; name some of {', '.join(known)} or leave it unset")
    return names


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
        info: Free-form facts about the episode. Agent episodes (the policy endpoint) set
            ``episode`` (the episode id shared by its segments), ``segment``/``segments``
            (this stream's index and the episode's count: one token stream per segment, and
            algorithms weigh a segmented episode like one), ``role`` and ``call_rewards``
            (``Turn.reward`` holds per-call rewards given by the agent).
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
    info: Mapping[str, Any] = field(default_factory=dict)

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

    Optional: a class attribute ``inline = True`` says ``reset``/``step`` are quick, pure
    Python and never block (a game, a string check): the loop then calls them in its own
    thread instead of a worker thread, with no step timeout. Leave it out for anything that
    waits on I/O, a subprocess or a server.
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


@dataclass(frozen=True)
class NoiseKeys:
    """Counter-based sampling noise for :meth:`Backend.generate` (``sampling.noise: counter``).

    One 63-bit key per prompt (``rollout.episode_seed`` of the run, the episode and its turn);
    the ``t``-th new token of row ``b`` is the inverse CDF of its probabilities at
    ``ops.keyed_noise.keyed_uniform(keys[b], t)``. Only for backends that set the optional
    ``counter_noise`` (see :data:`OPTIONAL`).
    """

    keys: tuple[int, ...]


class Backend(Protocol):
    """The policy: tokens in and out, sampling, differentiable log-probs, optimizer steps, weights.

    Everything the loop, the algorithms and the evaluation call on a backend is declared
    here; a backend needs nothing else (``tests/core/test_backend_contract.py`` trains the
    quickstart with a pure-torch backend written from this Protocol alone, and
    ``agent_lightning.testing.check_backend`` checks one). The members under "optional" may
    be absent: callers look them up with :func:`optional`. The reference implementation is
    ``agent_lightning.backends.transformers.backend.TransformersBackend``.

    Shapes: a ``PackedBatch`` (``agent_lightning.loop.batch``) holds ``T`` stream tokens of
    ``B`` sequences, ``N`` of them policy tokens.
    """

    version: int
    """Optimizer steps taken so far (the policy version recorded on sampled episodes);
    ``optimizer_step`` increments it, ``load`` restores it."""

    vocab_size: int
    """Size of the token id space: every id the backend produces or accepts is in ``[0, vocab_size)``."""

    # ---------------------------------------------------------------- tokens

    def encode_prompt(self, messages: Sequence[Message]) -> list[int]:
        """The prompt's token ids, ending where the assistant's reply starts (chat template applied).
        A backend that can render OpenAI tool schemas takes them as a ``tools=`` keyword (the
        policy endpoint passes it only for requests with tools)."""
        ...

    def encode_observation(self, messages: Sequence[Message], *, after_stop: bool) -> list[int]:
        """Token ids appended after a reply: the end of the assistant turn, ``messages`` and the
        start of the next assistant turn. ``after_stop``: the reply ended with a sampled stop
        token (``finish_reason == "stop"``), which already closed the turn; otherwise (cut off,
        or ended at a stop string) the end-of-turn text comes first. Takes ``tools=`` where
        ``encode_prompt`` does."""
        ...

    def decode(self, token_ids: Sequence[int]) -> str:
        """The action text of sampled ids (what the environment sees; special tokens dropped)."""
        ...

    # ---------------------------------------------------------------- sampling

    def generate(self, prompts: Sequence[Sequence[int]], *, temperature: float, top_p: float,
                 max_new_tokens: int, generator: Any = None, stop: Sequence[str] = ()) -> list[Generation]:
        """One continuation per prompt (token id lists), with the log-prob of every sampled
        token under the temperature-scaled policy. ``generator``: a ``torch.Generator``, a
        list of one per prompt (per-episode noise), or :class:`NoiseKeys` (counter-based,
        only where the backend sets ``counter_noise = True``); ``None``: the backend's own."""
        ...

    # ---------------------------------------------------------------- training

    def token_logprobs(self, batch: "PackedBatch", *, temperature: float, with_entropy: bool = False,
                       reference: bool = False) -> tuple[Any, Any]:
        """Log-probs of the batch's policy tokens: ``(logprobs [N], entropy [N] | None)``,
        float32, in stream order, differentiable unless ``reference`` (the frozen starting
        policy, no gradient). ``entropy`` only with ``with_entropy``."""
        ...

    def configure_optimizer(self, *, lr: float, weight_decay: float, betas: tuple[float, float], warmup_steps: int,
                            total_steps: int, schedule: str, extra_param_groups: tuple[dict[str, Any], ...] = ()) -> None:
        """Create the optimizer (AdamW) and its schedule (``constant``, ``linear`` or
        ``cosine`` after ``warmup_steps``); ``extra_param_groups`` (a value head) are stepped,
        clipped and checkpointed with the policy."""
        ...

    def optimizer_step(self, max_grad_norm: float, *, skip: bool = False) -> dict[str, float]:
        """Clip the accumulated gradients to ``max_grad_norm`` (0: no clipping), step, zero
        them; returns at least ``grad_norm`` and ``lr``. With ``skip`` (a non-finite loss
        somewhere), or a non-finite gradient norm, drop the gradients and change nothing
        else, returning ``skipped: 1.0``. Under torchrun it averages gradients over ranks."""
        ...

    def train_mode(self, training: bool) -> None:
        """Dropout and similar layers on (training) or off (sampling, no-grad passes)."""
        ...

    # ---------------------------------------------------------------- weights and state

    def save(self, directory: str) -> None:
        """Write weights, optimizer, schedule, sampler state and ``version`` into ``directory``
        (safetensors and JSON: no pickle)."""
        ...

    def load(self, directory: str) -> None:
        """Restore what ``save`` wrote; weights holding NaN/inf raise
        ``agent_lightning.loop.checkpoint.CheckpointError`` naming the file."""
        ...

    def describe(self) -> Mapping[str, Any]:
        """``model/parameters``, ``model/trainable_parameters`` (ints) and ``model/device`` (str)."""
        ...

    # ---------------------------------------------------------------- optional (see OPTIONAL)
    # ``render(token_ids) -> str``: ids as text with special tokens (trajectory files; else ``decode``).
    # ``reference_model()``: take the frozen reference now (algorithms with a KL term call it
    #     at setup, so that a resume does not snapshot trained weights).
    # ``correct_sampler_mismatch(batch, *, temperature) -> (batch, metrics)``: a backend whose
    #     sampler is another engine (vLLM) re-weights the batch (truncated importance sampling).
    # ``weights_state_dict()``: the trainable weights, for Ray rollout workers.
    # ``add_role(name, lora=None)`` / ``use_role(name)``: a LoRA adapter per agent role
    #     (``agent.roles``): sampling and training then use the named role's adapter.
    # ``model`` / ``tokenizer``: the Hugging Face objects of transformers-style backends (whose
    #     ``token_logprobs`` also takes ``with_hidden=True``), which PPO's value head, offline
    #     DPO's preference tokenization and FSDP sharding need; they say so when it is missing.
    # ``counter_noise = True``: ``generate`` takes :class:`NoiseKeys` (``sampling.noise: counter``);
    #     a run asking for it with a backend that does not say so stops with a config error.
    # ``token_loss(batch, loss_of, *, temperature, with_entropy=False) -> (loss, logprobs,
    #     entropy | None)``: ``loss_of(logprobs [N], entropy [N] | None) -> scalar`` over the
    #     policy tokens, differentiable; ``loss_of`` is row-separable (row i's gradient depends
    #     on row i alone) so the backend may take its gradient inside the forward pass
    #     (``ops.token_logprob_loss``); logprobs/entropy come back detached. The policy-gradient
    #     algorithms use it when present, else ``token_logprobs`` and autograd.
    # ``prompt_groups(batch) -> (groups [B], shared [B]) | None``: a backend whose training
    #     forward encodes a prompt shared by several rows once says which rows share their first
    #     ``shared[b]`` tokens (same ``groups[b] >= 0``; ``-1``: none); the update then keeps a
    #     group in one micro-batch and counts its prompt once against ``micro_batch_tokens``.


class Algorithm(Protocol):
    """Turns scored trajectories into policy updates.

    The trainer calls ``setup`` once (after the backend exists; create the optimizer
    there), then every step ``prepare`` (the training batch from the scored episodes; may
    return ``None`` when nothing is trainable) and ``update`` (advantages — in ``prepare``
    when they need only rewards, else first thing here, through ``agent_lightning.ops`` —
    then the optimisation, ``algorithms.training.optimize`` for the built-ins). ``state_dict`` /
    ``load_state_dict`` carry the algorithm's own state (a value head's running stats...)
    through checkpoints: plain data and tensors only.
    """

    group_size: int
    """Episodes played per task in a step (GRPO's group; 1 for algorithms without groups)."""

    def setup(self, backend: Backend, *, total_steps: int, temperature: float) -> None: ...

    def prepare(self, trajectories: Sequence[Trajectory]) -> Any: ...

    def update(self, backend: Backend, batch: Any) -> Mapping[str, float]:
        """Optimise on ``prepare``'s batch; metrics are logged as ``train/<key>``. The keys
        ``updates``, ``skipped_updates`` and ``trailing_skipped_updates`` (optimizer updates
        done, skipped for a non-finite loss, and skipped in a row at the end) feed the
        trainer's ``trainer.max_skipped_updates`` guard."""
        ...

    def state_dict(self) -> Mapping[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...

    # Optional (see OPTIONAL):
    # ``uses_rollouts`` (bool, default True): False for offline algorithms, which then train
    #     through ``offline_step(backend) -> metrics`` instead of rollouts.
    # ``held_out_metrics(backend) -> metrics``: the algorithm's own held-out metrics, logged as
    #     ``eval/<key>`` at every evaluation (offline DPO's preference accuracy).


@runtime_checkable
class Tracker(Protocol):
    """Receives the run's config, metrics and artifacts. Only rank 0 logs.

    A tracker that raises is disabled for the rest of the run with a warning naming it.
    """

    def log_config(self, config: Mapping[str, Any]) -> None: ...

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None: ...

    def log_artifact(self, path: str, name: str | None = None) -> None: ...

    def close(self) -> None: ...

    # Optional (see OPTIONAL):
    # ``resume(step)``: the run continues from the checkpoint at ``step`` (before ``log_config``).
    # ``log_trajectories(step, records)``: the step's sampled trajectories, as written to
    #     ``trajectories/step-N.jsonl``.
    # ``log_checkpoint(step, path)``: a checkpoint folder was published.
    # ``display_only`` (bool class attribute, default False): True for trackers that only print
    #     (``console``); results computed after the run (``alightning eval``) are not sent to
    #     them, and they are not even created for it (read from the registered factory).


OPTIONAL: dict[type, tuple[str, ...]] = {
    Backend: ("render", "reference_model", "correct_sampler_mismatch", "weights_state_dict", "model", "tokenizer",
              "add_role", "use_role", "counter_noise", "token_loss", "prompt_groups"),
    Algorithm: ("uses_rollouts", "offline_step", "held_out_metrics"),
    Tracker: ("resume", "log_trajectories", "log_checkpoint", "display_only"),
}
"""The members of each component Protocol that a component may leave out (described in
comments at the end of each Protocol); everything else in a Protocol is required."""


def optional(component: Any, protocol: type, name: str, default: Any = None) -> Any:
    """The optional member ``name`` of ``component``, or ``default`` when it has none.

    ``name`` must be declared optional for ``protocol`` in :data:`OPTIONAL`: the core looks
    up only what the contract declares.
    """
    if name not in OPTIONAL.get(protocol, ()):
        raise AttributeError(f"'{name}' is not an optional member of {protocol.__name__} (types.py)")
    return getattr(component, name, default)
