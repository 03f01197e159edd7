"""Run configuration: YAML (``yaml.safe_load`` only) validated into typed objects.

Top-level sections: ``model``, ``backend``, ``environment`` or ``agent``, ``reward``,
``algorithm``, ``sampling``, ``trainer``, ``trackers``. A component is chosen by ``name:`` inside its
section; the section's other keys are that component's options, validated by the
component itself (its error names the key path too).

Problems become a ``ConfigError`` naming, for each, the key path, the value and what is
allowed (with a did-you-mean where one is close): one line for a single problem, else a
count line and one line per problem (unknown keys, then invalid values, then missing
keys). The CLI prints it as ``error: ...`` and exits with code 2.
"""

from __future__ import annotations

import collections.abc
import difflib
import enum
import importlib.resources
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A configuration problem phrased for the user: one line, or one line per problem."""


def require_package(package: str, section: str, extra: str) -> None:
    """Raise a ``ConfigError`` naming ``section`` and the extra to install when ``package``
    cannot be imported (checked without importing it)."""
    import importlib.util

    if importlib.util.find_spec(package) is None:
        raise ConfigError(f"{section}: the {package} package is not installed (pip install 'agent-lightning[{extra}]')")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraSettings(_Strict):
    """LoRA adapters through peft."""

    r: int = Field(8, ge=1)
    alpha: float = 16.0
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | str = "all-linear"
    layers: int | list[int] | None = Field(
        None, description="adapt only these decoder layers (indices), or an int n: the last n; "
                          "backpropagation then stops at the lowest adapted layer")


class ModelConfig(_Strict):
    """Which causal LM to train.

    Exactly one of: ``preset`` (a built-in tiny random-init model, see
    ``agent_lightning.backends.transformers.tiny``), ``name_or_path`` (Hub id or local directory), or
    ``gguf_file`` (a ``.gguf`` file, dequantised; ``name_or_path`` may name its directory).
    """

    preset: str | None = None
    name_or_path: str | None = None
    gguf_file: str | None = None
    revision: str | None = None
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    trust_remote_code: bool = False
    lora: LoraSettings | None = None
    quantization: Literal["4bit"] | None = Field(None, description="4bit: QLoRA, a 4-bit NF4 base (CUDA, bitsandbytes)")
    preset_options: dict[str, Any] = Field(default_factory=dict)
    chat_template: str | None = Field(
        None, description="replace the tokenizer's chat template: a built-in name (chatml-tools: ChatML with "
                          "Hermes-style tool calls, for models whose template lacks tools) or a .jinja file")


class BackendConfig(_Strict):
    name: str = "transformers"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1, description="torch intra-op CPU threads; null: torch's default")
    autocast: Literal["bfloat16", "auto"] | None = Field(None, description=(
        "sample and train under torch.autocast in this dtype: matmuls in bfloat16, weights and optimizer "
        "state stay float32, the lm-head log-probs that training uses stay float32. Needs bfloat16 matmuls "
        "(CPUs with AVX-512 BF16 / AMX, GPUs from Ampere): elsewhere bfloat16 is emulated and slower than "
        "float32. auto: bfloat16 where the device has them, float32 elsewhere (precision.py). The "
        "sampler/trainer log-prob gap it adds is reported as train/sampler_logprob_diff; the clipped ratio "
        "against the sampler's log-probs corrects for it"))
    merged_sampling: bool = Field(False, description=(
        "LoRA: sample from a copy of the model with the active adapter folded into its weights, re-merged "
        "when the adapter changes: no adapter matmuls per decoded token (SmolLM2-135M, 2 CPU cores, 16 rows "
        "x 16 tokens under bfloat16 autocast: 1.8 -> 1.3 s); costs a copy of the adapted layers' weights; "
        "the sampler/trainer log-prob gap then includes the merge's rounding"))
    cpu_memory: Literal["reuse", "system"] = Field("reuse", description=(
        "on a CPU device: reuse keeps the memory a training step frees for the next one (glibc malloc "
        "without mmap for large blocks and without heap trimming; process-wide, the peak stays resident), "
        "instead of fresh pages whose first touch page-faults at every step (SmolLM2-135M LoRA update of "
        "two 8-episode groups with 1,224-token prompts: 38.0 -> 29.1 s, benchmarks/bench_cpu_memory.py); system: the C library's defaults "
        "(cpu_memory.py)"))
    kv_cache: Literal["dynamic", "static"] = Field("dynamic", description=(
        "generate's KV cache: dynamic (transformers' DynamicCache, grown with torch.cat at every token) or "
        "static (StaticCache buffers sized for prompt + max_new_tokens, written in place and reused across "
        "calls; models whose cache cannot be static keep the dynamic one)"))
    share_prompts: bool = Field(True, description=(
        "training forwards encode a prompt shared by several sequences of the batch (a GRPO group's) once, "
        "the sampled remainders attending to it, instead of once per sequence: same hidden states and "
        "gradients up to float rounding (agent_lightning/backends/transformers/shared_prompts.py); used where "
        "it removes at least 10 % of the batch's tokens and the attention runs packed (not flash-attn); the "
        "update's micro-batches then keep a group together and count its prompt once"))
    options: dict[str, Any] = Field(default_factory=dict)


class SamplingConfig(_Strict):
    """How the policy samples during rollouts (``eval_temperature`` during evaluation)."""

    temperature: float = Field(1.0, gt=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(64, ge=1)
    max_turns: int = Field(8, ge=1)
    max_context_tokens: int = Field(4096, ge=8)
    eval_temperature: float = Field(1.0, ge=0.0)
    stop: list[str] = Field(default_factory=list,
                            description="strings that end a reply (kept in it), e.g. </tool_call>")
    noise: Literal["generator", "counter"] = Field(
        "generator", description=(
            "where a seeded run's sampling noise comes from: generator (a torch.Generator per episode turn, one "
            "multinomial per row) or counter (a hash of seed, episode, turn and position, the inverse CDF of the "
            "whole batch at once; faster, other samples; agent_lightning/ops/keyed_noise.py)"))

    @field_validator("stop")
    @classmethod
    def _non_empty_stops(cls, value: list[str]) -> list[str]:
        if any(not s for s in value):
            raise ValueError("stop strings must be non-empty")
        return value


class ReplayConfig(_Strict):
    """Off-policy reuse (``agent_lightning.loop.replay``); off while ``capacity_steps`` is 0."""

    capacity_steps: int = Field(0, ge=0, description="keep the groups of the last K steps; 0: no replay")
    replay_ratio: float = Field(0.5, ge=0.0, description="replayed groups per fresh group in a step's batch")
    max_staleness: int | None = Field(None, ge=0, description="drop groups sampled more than this many policy versions ago")
    is_truncation: float = Field(2.0, gt=0.0, description="importance weights are min(ratio, is_truncation)")
    micro_batch_tokens: int = Field(16384, ge=1, description="token budget of the no-grad log-prob pass")


class ExecutorConfig(BaseModel):
    """``trainer.executor``: where episodes are played (``agent_lightning.scaling.executors``); the
    other keys are the executor's options (``ray``: workers, address, ...)."""

    model_config = ConfigDict(extra="allow")
    name: Literal["inprocess", "ray"] = "inprocess"

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class DistributedConfig(_Strict):
    """``trainer.distributed``: data parallelism when launched by ``torchrun``
    (``agent_lightning.scaling.distributed``); ignored in a plain 1-process run."""

    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="auto: nccl on CUDA, else gloo")
    strategy: Literal["ddp", "fsdp"] = Field("ddp", description="ddp: a replica per rank; fsdp: FSDP2-sharded weights")
    timeout_s: float = Field(1800.0, gt=0.0, description="collective timeout")


class TrainerConfig(_Strict):
    """The loop: how long, how often to evaluate and checkpoint, how to survive failures."""

    steps: int = Field(100, ge=0)
    batch_size: int = Field(8, ge=1, description="tasks per step (each played group_size times)")
    eval_every: int = Field(0, ge=0, description="0: only at step 0 and at the end")
    eval_episodes: int = Field(32, ge=1, description="held-out episodes per evaluation")
    checkpoint_every: int = Field(0, ge=0, description="0: only at the end")
    keep_checkpoints: int = Field(3, ge=1)
    seed: int = 0
    max_failure_rate: float = Field(0.5, ge=0.0, le=1.0)
    step_timeout_s: float = Field(30.0, gt=0.0)
    time_limit_s: float | None = Field(
        None, gt=0.0, description="stop training after the first step that ends past this many seconds "
                                  "(from the first step); the final evaluation and checkpoint then run as at `steps`")
    max_skipped_updates: int = Field(3, ge=0, description="abort after more than this many optimizer updates "
                                                            "in a row skipped for a non-finite loss or gradient norm")
    checkpoint_errors: Literal["abort", "warn"] = Field(
        "abort", description="a checkpoint that cannot be written (full disk): abort the run, or warn and go on")
    log_trajectories: int = Field(4, ge=0, description="trajectories written per step")
    output_dir: str = "runs"
    replay: ReplayConfig = Field(default_factory=ReplayConfig)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)


class ComponentConfig(BaseModel):
    """``name:`` plus the component's own options (validated by the component)."""

    model_config = ConfigDict(extra="allow")
    name: str

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class AgentRole(_Strict):
    """One role of a multi-role agent (``agent.roles.<name>``)."""

    lora: LoraSettings | None = Field(None, description="this role's adapter (default: model.lora)")


class AgentConfig(_Strict):
    """An existing agent trained through the policy endpoint (``agent_lightning.agents``).

    Exactly one of ``entrypoint`` (a Python function ``solve(task, llm)``), ``command`` (a
    program run per episode) or ``name`` (a registered agent, ``options`` passed to it).
    Tasks come from ``tasks`` (JSONL) or, without it, from the ``environment`` section's
    task list; held-out tasks from ``eval_tasks``, else a ``held_out`` fraction of ``tasks``.
    """

    name: str | None = None
    entrypoint: str | None = None
    command: list[str] | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    tasks: str | None = Field(None, description="JSONL file of training tasks (one JSON object per line)")
    eval_tasks: str | None = Field(None, description="JSONL file of held-out tasks")
    held_out: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of `tasks` held out when no eval_tasks")
    concurrency: int = Field(16, ge=1, description="episodes run at once")
    workers: int = Field(0, ge=0, description=(
        "worker processes the agents run in, each with its own interpreter lock (0: threads of the trainer's "
        "process). Agents whose own Python work is heavy (HTTP clients, parsing, tools) stop competing with the "
        "endpoint that answers them; results must pickle"))
    timeout_s: float = Field(300.0, gt=0.0, description="an episode running longer fails")
    max_batch: int = Field(16, ge=1, description="most calls sampled in one generate")
    batch_wait_ms: float = Field(25.0, ge=0.0, description="how long a call waits for others to share its batch "
                                                           "(at least 5% of the last generate call, at most 1 s)")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="largest request body the endpoint reads")
    sandbox: bool = Field(False, description="run a command agent under bubblewrap: read-only host files, its own "
                                             "scratch folder (cwd and TMPDIR), its own PID namespace, user nobody")
    success_reward: float = Field(1.0, description="an episode with at least this reward counts as a success "
                                                   "(unless the agent reports success itself)")
    roles: dict[str, AgentRole] = Field(default_factory=dict, description=(
        "role name -> settings: the agent names a role in each request's `model`; each role trains its own "
        "LoRA adapter on its own calls (needs model.lora)"))

    @model_validator(mode="after")
    def _one_kind(self) -> "AgentConfig":
        given = [k for k in ("name", "entrypoint", "command") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of agent.entrypoint, agent.command or agent.name"
                             + (f" (got {', '.join(given)})" if given else ""))
        if self.command is not None and not self.command:
            raise ValueError("agent.command: an empty command")
        if self.sandbox and self.command is None:
            raise ValueError("agent.sandbox: only command agents run sandboxed (a Python entrypoint runs in the "
                             "trainer's process)")
        bad = [r for r in self.roles if not r.isidentifier() or r == "default"]
        if bad:
            raise ValueError(f"agent.roles: '{bad[0]}' is not a role name (letters, digits, '_'; not 'default')")
        return self

    @property
    def factory(self) -> tuple[str, dict[str, Any]]:
        """The registered agent and its options."""
        if self.entrypoint is not None:
            return "entrypoint", {"target": self.entrypoint, **self.options}
        if self.command is not None:
            return "command", {"command": list(self.command), "timeout_s": self.timeout_s,
                               **({"sandbox": True} if self.sandbox else {}), **self.options}
        return str(self.name), dict(self.options)


class RunConfig(_Strict):
    model: ModelConfig = Field(default_factory=ModelConfig)
    backend: BackendConfig = Field(default_factory=BackendConfig)
    environment: ComponentConfig | None = Field(..., description="required unless agent.tasks gives the tasks")
    agent: AgentConfig | None = None
    reward: ComponentConfig | None = None
    algorithm: ComponentConfig = Field(default_factory=lambda: ComponentConfig(name="grpo"))
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    trackers: list[ComponentConfig] = Field(
        default_factory=lambda: [ComponentConfig(name="console"), ComponentConfig(name="jsonl")]
    )

    @field_validator("trackers", mode="before")
    @classmethod
    def _tracker_names(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list):
            return [{"name": item} if isinstance(item, str) else item for item in value]
        return value

    @model_validator(mode="before")
    @classmethod
    def _environment_optional_for_agents(cls, data: Any) -> Any:
        """An agent with its own task file needs no environment section."""
        if isinstance(data, dict) and "environment" not in data:
            agent = data.get("agent")
            if isinstance(agent, dict) and agent.get("tasks") is not None:
                return {**data, "environment": None}
        return data

    @model_validator(mode="after")
    def _work(self) -> "RunConfig":
        if self.environment is None and (self.agent is None or self.agent.tasks is None):
            raise ValueError("environment: null needs an agent with agent.tasks (the tasks come from somewhere)")
        if self.agent is not None and self.agent.roles:
            if self.model.lora is None:
                raise ValueError("agent.roles: each role trains its own LoRA adapter; set model.lora")
            if self.trainer.replay.capacity_steps:
                raise ValueError("agent.roles: replay (trainer.replay) is not supported with roles")
        if self.reward is None:  # agents report their reward; environments score through env-reward
            self.reward = ComponentConfig(name="agent" if self.agent is not None else "env-reward")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain data (component options flattened back into their sections)."""
        data = self.model_dump(mode="json", exclude_none=True)
        return data


# ----------------------------------------------------------------------------- loading


def package_file(path: str, what: str) -> Path:
    """A file path, or ``<python package>/<file>`` inside an installed package (such as
    ``agent_lightning/presets/react_calculator_train.jsonl``), found without importing the
    package; ``ValueError`` naming ``what`` (the config key) otherwise."""
    import importlib.util

    candidate = Path(path).expanduser()
    if candidate.is_file():
        return candidate
    package, _, rest = path.partition("/")
    spec = importlib.util.find_spec(package) if package.isidentifier() and rest else None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / rest).is_file():
            return Path(folder) / rest
    raise ValueError(f"{what}: '{path}' is neither a file nor a file inside an installed package")


def preset_path(name: str) -> Path | None:
    """Path of a packaged preset (``agent_lightning/presets/<name>.yaml``), if it exists."""
    resource = importlib.resources.files("agent_lightning") / "presets" / f"{name}.yaml"
    return Path(str(resource)) if resource.is_file() else None


def preset_names() -> list[str]:
    folder = importlib.resources.files("agent_lightning") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def read_yaml(source: str) -> dict[str, Any]:
    """Read a config file or packaged preset name into plain data."""
    path = Path(source)
    if not path.is_file():
        packaged = preset_path(source)
        if packaged is None:
            raise ConfigError(
                f"config '{source}' is neither a file nor a packaged preset (presets: {', '.join(preset_names())})"
            )
        path = packaged
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


COMPONENT_SECTIONS = ("environment", "reward", "algorithm")


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to nested plain data.

    Choosing another component (``environment.name=other``) starts that section afresh:
    the previous component's options do not carry over; later overrides add the new
    component's options (``environment.name=other environment.size=3``).
    """
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override '{item}' is not of the form key.path=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            raise ConfigError(f"override '{item}': the value is not valid YAML") from None
        node = data
        parts = key.split(".")
        if len(parts) == 2 and parts[0] in COMPONENT_SECTIONS and parts[1] == "name":
            current = data.get(parts[0])
            if not isinstance(current, dict) or current.get("name") != value:
                data[parts[0]] = {"name": value}
                continue
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(
                    f"override '{item}': '{'.'.join(parts[: depth + 1])}' is a value, not a section"
                )
            node = child
        node[parts[-1]] = value
    return data


_WRAPPER_PARTS = {"function-after", "function-before", "function-wrap", "function-plain"}
_NAME_EXAMPLES = {"environment": "guess-number", "reward": "env-reward", "algorithm": "grpo", "trackers": "console"}
"""Example component names shown when a section or its ``name:`` is missing."""


def _candidates(annotation: Any) -> list[Any]:
    """The annotation itself, or the members of a union (``X | None`` -> ``[X]``)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(annotation) if a is not type(None)]
    return [annotation]


def _as_model(annotation: Any) -> type[BaseModel] | None:
    return next((c for c in _candidates(annotation) if isinstance(c, type) and issubclass(c, BaseModel)), None)


def _walk(model: type[BaseModel], loc: Sequence[Any]) -> list[Any]:
    """Annotations along ``loc`` from ``model``: one per leading part that names a declared
    field (or a list item); stops at the first part that does not (an unknown key, a union
    member's tag, a mapping's key)."""
    annotations: list[Any] = []
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            item = next((typing.get_args(c)[0] for c in _candidates(current)
                         if typing.get_origin(c) in (list, tuple, collections.abc.Sequence) and typing.get_args(c)), None)
            if item is None:
                break
            current = item
        else:
            holder = _as_model(current)
            field = getattr(holder, "model_fields", {}).get(part) if holder else None
            if field is None:
                break
            current = field.annotation
        annotations.append(current)
    return annotations


def _model_at(model: type[BaseModel], loc: Sequence[Any]) -> type[BaseModel] | None:
    """The model whose keys sit at ``loc`` (``()``: ``model`` itself)."""
    annotations = _walk(model, loc)
    return _as_model(annotations[-1] if loc else model) if len(annotations) == len(loc) else None


def _allowed_keys(model: type[BaseModel], loc: Sequence[Any]) -> list[str]:
    """Field names of the model found at ``loc`` (without the last element)."""
    return sorted(getattr(_model_at(model, loc[:-1]), "model_fields", {}))


def _closest(word: Any, choices: Sequence[Any]) -> Any | None:
    """The choice closest to ``word`` (difflib, ignoring case), or None."""
    if not isinstance(word, str):
        return None
    by_lower = {str(c).lower(): c for c in choices}
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=1)
    return by_lower[close[0]] if close and by_lower[close[0]] != word else None


def _literal_choices(annotation: Any, error: Mapping[str, Any]) -> list[Any]:
    """Allowed values of a ``Literal``/``Enum`` field (else those quoted in the error)."""
    choices: list[Any] = []
    for candidate in _candidates(annotation):
        if typing.get_origin(candidate) is Literal:
            choices += typing.get_args(candidate)
        elif isinstance(candidate, type) and issubclass(candidate, enum.Enum):
            choices += [member.value for member in candidate]
    if not choices:
        choices = re.findall(r"'([^']*)'", str((error.get("ctx") or {}).get("expected", "")))
    return choices


def _shown(value: Any) -> str:
    text = repr(value)
    if isinstance(value, (dict, list)) and len(text) > 60:
        return f"<{type(value).__name__} of {len(value)} item(s)>"
    return text


def _problem_kind(error: Mapping[str, Any]) -> str:
    return {"extra_forbidden": "unknown", "missing": "missing"}.get(error["type"], "invalid")


def _describe(error: Mapping[str, Any], model: type[BaseModel] = RunConfig, prefix: Sequence[str] = ()) -> str:
    """One line for one pydantic error of ``model`` (key paths start with ``prefix``):
    the key path, the value and what is allowed, with a did-you-mean where one is close."""
    loc = [p for p in error["loc"] if not (isinstance(p, str) and p in _WRAPPER_PARTS)]
    path = ".".join(str(p) for p in (*prefix, *loc)) or "<top level>"
    kind = _problem_kind(error)
    if kind == "unknown":
        allowed = _allowed_keys(model, loc)
        close = _closest(str(loc[-1]), allowed) if loc else None
        listed = f" (allowed: {', '.join(allowed)})" if allowed else ""
        hint = f"; did you mean '{close}'?" if close else ""
        return f"unknown key '{path}'{listed}{hint}"
    annotations = _walk(model, loc)
    if kind == "missing":
        return f"missing key '{path}'{_missing_detail(model, loc, annotations)}{_misspelt_hint(model, loc, error)}"
    hint = ""
    if error["type"] in ("literal_error", "enum") and len(annotations) == len(loc):
        choices = _literal_choices(annotations[-1] if loc else model, error)
        close = _closest(error.get("input"), choices) if len(choices) > 1 else None
        hint = f"; did you mean {close!r}?" if close is not None else ""
    return f"invalid value {_shown(error.get('input'))} for '{path}': {error['msg']}{hint}"


def _missing_detail(model: type[BaseModel], loc: Sequence[Any], annotations: list[Any]) -> str:
    """What a missing key should hold: a section's required keys, a component's name, or
    the field's description."""
    if not loc or len(annotations) != len(loc):
        return ""
    section = next((str(p) for p in loc if isinstance(p, str)), "")
    example = _NAME_EXAMPLES.get(section)
    missing_model = _as_model(annotations[-1])
    if missing_model is not None:
        required = [name for name, field in missing_model.model_fields.items() if field.is_required()]
        if not required:
            return ""
        keys = ", ".join(f"'{name}:'" for name in required)
        shown = f", e.g. {loc[-1]}: {{name: {example}}}" if required == ["name"] and example else ""
        return f" (a section with at least {keys}{shown})"
    holder = _model_at(model, loc[:-1])
    if loc[-1] == "name" and holder is not None and issubclass(holder, ComponentConfig):
        what = section[:-1] if section == "trackers" else section
        return f" (which {what} to use, e.g. name: {example})" if example else f" (which {what} to use)"
    field = getattr(holder, "model_fields", {}).get(loc[-1]) if holder else None
    return f" ({field.description})" if field is not None and field.description else ""


def _misspelt_hint(model: type[BaseModel], loc: Sequence[Any], error: Mapping[str, Any]) -> str:
    """For a missing key: an undeclared key given beside it that is close to its name."""
    given = error.get("input")
    if not loc or not isinstance(given, Mapping) or not isinstance(loc[-1], str):
        return ""
    declared = set(_allowed_keys(model, loc))
    strays = [k for k in given if isinstance(k, str) and k not in declared]
    close = difflib.get_close_matches(loc[-1], strays, n=1)
    return f"; did you mean '{loc[-1]}' instead of the unknown '{close[0]}'?" if close else ""


def _merge_union_errors(errors: Sequence[Mapping[str, Any]], model: type[BaseModel]) -> list[dict[str, Any]]:
    """One error per field: the errors of a union field's members (``loc`` ending in a
    member's tag, e.g. ``target_modules.list[str]`` and ``target_modules.str``) become one,
    at the field, whose message names every member."""
    merged: list[dict[str, Any]] = []
    by_path: dict[tuple[Any, ...], dict[str, Any]] = {}
    for error in errors:
        error = dict(error)
        loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p in _WRAPPER_PARTS))
        annotations = _walk(model, loc)
        n = len(annotations)
        if _problem_kind(error) == "invalid" and 0 < n < len(loc) and len(_candidates(annotations[-1])) > 1:
            field_loc = loc[:n]
            if field_loc in by_path:
                by_path[field_loc]["msgs"].append(error["msg"])
                continue
            error.update(loc=field_loc, type="union", msgs=[error["msg"]])
            by_path[field_loc] = error
        merged.append(error)
    for error in by_path.values():
        messages = error.pop("msgs")
        lead = "Input should be "
        if all(m.startswith(lead) for m in messages):
            rest = [m[len(lead):] for m in messages]
            error["msg"] = lead + ("; or " if any("," in r for r in rest) else " or ").join(rest)
        else:
            error["msg"] = "; or ".join(messages)
    return merged


def _problems(exc: ValidationError, model: type[BaseModel], prefix: Sequence[str] = ()) -> list[str]:
    """Every problem of ``exc``, one line each: unknown keys, then invalid values, then
    missing keys; within a kind in pydantic's order (the order the models declare their
    fields, unknown keys after a level's fields)."""
    order = {"unknown": 0, "invalid": 1, "missing": 2}
    errors = sorted(_merge_union_errors(exc.errors(), model), key=lambda e: order[_problem_kind(e)])
    lines: list[str] = []
    for error in errors:
        line = _describe(error, model, prefix)
        if line not in lines:
            lines.append(line)
    return lines


def _problems_error(problems: Sequence[str], where: str) -> ConfigError:
    """One problem: its line; several: a count line, then one indented line each."""
    if len(problems) == 1:
        return ConfigError(problems[0])
    return ConfigError(f"{len(problems)} problems in {where}:\n" + "\n".join(f"  {p}" for p in problems))


def validate(data: Mapping[str, Any]) -> RunConfig:
    """Validate plain data into a ``RunConfig`` or raise a ``ConfigError`` listing every
    problem (one line when there is one)."""
    try:
        return RunConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise _problems_error(_problems(exc, RunConfig), "the config") from None


ENV_OVERRIDES: dict[str, str] = {
    "ALIGHTNING_OUTPUT_DIR": "trainer.output_dir",
    "ALIGHTNING_STEPS": "trainer.steps",
    "ALIGHTNING_SEED": "trainer.seed",
    "ALIGHTNING_EVAL_EVERY": "trainer.eval_every",
    "ALIGHTNING_CHECKPOINT_EVERY": "trainer.checkpoint_every",
    "ALIGHTNING_TRACKERS": "trackers",
    "ALIGHTNING_DEVICE": "backend.device",
    "ALIGHTNING_THREADS": "backend.threads",
    "ALIGHTNING_MODEL": "model.name_or_path",
}
"""Environment variables that set config keys (between the config file and the command line)."""

PASSTHROUGH_PREFIXES = ("WANDB_", "MLFLOW_")
SECRET_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD")


def env_overrides(environ: Mapping[str, str]) -> list[str]:
    """``key.path=value`` overrides from ``ALIGHTNING_*`` variables (``ALIGHTNING_TRACKERS``
    also takes a comma list: ``console,jsonl``)."""
    out = []
    for var, path in ENV_OVERRIDES.items():
        value = environ.get(var)
        if value is None or value == "":
            continue
        if var == "ALIGHTNING_TRACKERS" and not value.lstrip().startswith("["):
            value = "[" + value + "]"
        out.append(f"{path}={value}")
    return out


def passthrough_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """``WANDB_*`` / ``MLFLOW_*`` variables the trackers read, with secrets masked."""
    shown = {}
    for key in sorted(environ):
        if key.startswith(PASSTHROUGH_PREFIXES):
            secret = any(marker in key for marker in SECRET_MARKERS)
            shown[key] = "***" if secret else environ[key]
    return shown


def load_config(source: str | None, overrides: Sequence[str] = (), environ: Mapping[str, str] | None = None) -> RunConfig:
    """Config file or preset (default ``quickstart``), then ``ALIGHTNING_*`` environment
    variables, then command-line overrides (command line > environment > file > defaults)."""
    import os

    data = read_yaml(source or "quickstart")
    data = apply_overrides(data, env_overrides(os.environ if environ is None else environ))
    return validate(apply_overrides(data, overrides))


def _leaves(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


def explain(source: str | None, overrides: Sequence[str] = (), environ: Mapping[str, str] | None = None) -> list[tuple[str, Any, str]]:
    """``(key path, value, where it came from)`` for every resolved value: ``command line``,
    ``env ALIGHTNING_X``, ``file <path>`` or ``default``."""
    import os

    environ = os.environ if environ is None else environ
    config = load_config(source, overrides, environ)
    file_leaves = _leaves(read_yaml(source or "quickstart"))
    env_paths = {path: var for var, path in ENV_OVERRIDES.items() if environ.get(var)}
    cli_paths = [item.partition("=")[0].strip() for item in overrides]
    origin = f"file {source}" if source else "preset quickstart"
    rows = []
    for path, value in _leaves(config.to_dict()).items():
        def covers(prefix: str) -> bool:
            return path == prefix or path.startswith(prefix + ".")

        if any(covers(p) for p in cli_paths):
            where = "command line"
        elif any(covers(p) for p in env_paths):
            where = "env " + next(var for p, var in env_paths.items() if covers(p))
        elif path in file_leaves or any(path.startswith(k + ".") for k in file_leaves):
            where = origin
        else:
            where = "default"
        rows.append((path, value, where))
    return rows


def parse_options(config_cls: type[BaseModel], section: str, options: Mapping[str, Any]) -> Any:
    """Validate a component's options into ``config_cls``; errors name ``section.key``.

    Components with many options (algorithms first) use this, so that their mistakes
    read like the core config's: every problem listed, unknown keys with a did-you-mean.
    """
    try:
        return config_cls.model_validate(dict(options))
    except ValidationError as exc:
        raise _problems_error(_problems(exc, config_cls, (section,)), f"'{section}'") from None


def dump_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
