"""Conformance checks for backends and algorithms, against the Protocols in ``agent_lightning.types``.

    from agent_lightning.testing import check_algorithm, check_backend

    check_backend(MyBackend(model_config, backend_config))   # raises ConformanceError
    check_algorithm(MyAlgorithm(**options), backend)

``check_backend`` exercises every required member of ``Backend`` on a two-message chat:
token ids inside ``vocab_size``, reproducible sampling with per-prompt generators (and, for a
backend that sets ``counter_noise``, with ``NoiseKeys``, whatever the batch), sampling
log-probs equal to the recomputed ones, gradients and an optimizer step that moves the
policy and bumps ``version``, a skipped step that changes nothing, a frozen reference, a
save/load round trip, and (for a backend with ``token_loss``) the same loss and gradient as
``token_logprobs`` with autograd. ``check_algorithm`` runs ``setup``/``prepare``/``update`` on episodes
sampled from the backend and round-trips ``state_dict``.
"""

from __future__ import annotations

import math
import tempfile
from typing import Any, Mapping, Sequence

from agent_lightning.testing.conformance import ConformanceError
from agent_lightning.types import OPTIONAL, Algorithm, Backend, Task, Trajectory, Turn, optional

MESSAGES = ({"role": "system", "content": "You guess numbers."},
            {"role": "user", "content": "Guess a number between 1 and 6 ."})
LOGPROB_TOLERANCE = 1e-3
"""Largest allowed difference between a sampling log-prob and its recomputation (float32)."""


def _fail(what: str, message: str) -> None:
    raise ConformanceError(f"{what}: {message}")


def required_members(protocol: type) -> list[str]:
    """The members of a component Protocol that every component must have."""
    names = set(getattr(protocol, "__annotations__", {}))
    names |= {n for n, v in vars(protocol).items() if callable(v) and not n.startswith("_")}
    return sorted(names - set(OPTIONAL.get(protocol, ())))


def _check_members(what: str, component: Any, protocol: type) -> None:
    missing = [name for name in required_members(protocol) if not hasattr(component, name)]
    if missing:
        _fail(what, f"missing required {protocol.__name__} member(s) {', '.join(missing)} (agent_lightning.types)")


def _check_ids(what: str, ids: Any, vocab_size: int) -> list[int]:
    if not isinstance(ids, list) or not all(isinstance(t, int) and 0 <= t < vocab_size for t in ids):
        _fail(what, f"expected a list of int token ids in [0, {vocab_size}), got {ids!r}"[:300])
    return ids


def _generators(seed: int, n: int) -> list[Any]:
    import torch

    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def _trajectory(prompt: Sequence[int], generation: Any, task: Task, group: int, index: int, reward: float) -> Trajectory:
    turn = Turn(action="", action_token_ids=tuple(generation.token_ids), action_logprobs=tuple(generation.logprobs))
    return Trajectory(id=f"{task.id}/{index}", task=task, group=group, prompt_token_ids=tuple(prompt), turns=(turn,),
                      final_reward=reward)


def _sample(backend: Backend, n: int, seed: int, max_new_tokens: int = 4) -> tuple[list[int], list[Any]]:
    prompt = backend.encode_prompt(MESSAGES)
    return prompt, backend.generate([prompt] * n, temperature=1.0, top_p=1.0, max_new_tokens=max_new_tokens,
                                    generator=_generators(seed, n))


def _check_counter_noise(what: str, backend: Backend, prompt: list[int]) -> None:
    """A backend that sets ``counter_noise`` samples the same row from the same key, in any batch."""
    from agent_lightning.types import NoiseKeys

    keys = (3, 2 ** 40 + 1, 12345)
    try:
        batch = backend.generate([prompt] * 3, temperature=1.0, top_p=1.0, max_new_tokens=4, generator=NoiseKeys(keys))
        alone = [backend.generate([prompt], temperature=1.0, top_p=1.0, max_new_tokens=4,
                                  generator=NoiseKeys((k,)))[0] for k in keys]
    except Exception as exc:  # noqa: BLE001 - named in the conformance error
        _fail(f"{what}.generate", f"sets counter_noise but generate(generator=NoiseKeys(...)) raised "
                                  f"{type(exc).__name__}: {exc}")
    if [g.token_ids for g in batch] != [g.token_ids for g in alone]:
        _fail(f"{what}.generate", "sets counter_noise but a row's NoiseKeys sample depends on its batch")


def check_backend(backend: Backend) -> dict[str, Any]:
    """Assert that ``backend`` keeps the ``Backend`` contract; returns a few measured facts."""
    import torch

    from agent_lightning.loop.batch import pack_trajectories

    what = f"backend {type(backend).__name__}"
    _check_members(what, backend, Backend)
    vocab = int(backend.vocab_size)
    prompt = _check_ids(f"{what}.encode_prompt", backend.encode_prompt(MESSAGES), vocab)
    _check_ids(f"{what}.encode_observation", backend.encode_observation(MESSAGES[1:], after_stop=False), vocab)
    if not prompt:
        _fail(f"{what}.encode_prompt", "returned no tokens")
    _, first = _sample(backend, 3, seed=7)
    _, again = _sample(backend, 3, seed=7)
    if [g.token_ids for g in first] != [g.token_ids for g in again]:
        _fail(f"{what}.generate", "the same per-prompt generators gave different samples")
    for g in first:
        _check_ids(f"{what}.generate", list(g.token_ids), vocab)
        if len(g.token_ids) != len(g.logprobs) or not g.token_ids:
            _fail(f"{what}.generate", f"{len(g.token_ids)} ids but {len(g.logprobs)} log-probs")
        if any(not math.isfinite(lp) or lp > 1e-4 for lp in g.logprobs):
            _fail(f"{what}.generate", f"sampling log-probs must be finite and <= 0, got {g.logprobs}")
        if not isinstance(backend.decode(g.token_ids), str):
            _fail(f"{what}.decode", "must return a str")

    if optional(backend, Backend, "counter_noise", False):
        _check_counter_noise(what, backend, prompt)

    task = Task(id="check", prompt=MESSAGES)
    trajectories = [_trajectory(prompt, g, task, 0, i, float(i)) for i, g in enumerate(first)]
    batch = pack_trajectories(trajectories, [[1.0] * t.num_policy_tokens for t in trajectories])
    backend.train_mode(True)
    logp, entropy = backend.token_logprobs(batch, temperature=1.0, with_entropy=True)
    n = int(batch.policy_index.numel())
    if tuple(logp.shape) != (n,) or entropy is None or tuple(entropy.shape) != (n,):
        _fail(f"{what}.token_logprobs", f"expected logprobs and entropy of shape [{n}], got {tuple(logp.shape)}")
    gap = float((logp.detach().float() - batch.sampling_logprobs.float()).abs().max())
    if gap > LOGPROB_TOLERANCE:
        _fail(f"{what}.token_logprobs", f"recomputed log-probs differ from the sampling ones by {gap:.2e} "
                                        f"(> {LOGPROB_TOLERANCE}): training would not be on what was sampled")
    if not logp.requires_grad:
        _fail(f"{what}.token_logprobs", "the policy's log-probs carry no gradient")
    reference, _ = backend.token_logprobs(batch, temperature=1.0, reference=True)
    if reference.requires_grad:
        _fail(f"{what}.token_logprobs(reference=True)", "the reference must not carry a gradient")

    backend.configure_optimizer(lr=1e-2, weight_decay=0.0, betas=(0.9, 0.999), warmup_steps=0, total_steps=10,
                                schedule="constant")
    version = int(backend.version)
    with tempfile.TemporaryDirectory() as folder:
        backend.save(folder)
        (-logp.mean()).backward()
        out = backend.optimizer_step(1.0)
        if not {"grad_norm", "lr"} <= set(out) or not math.isfinite(out["grad_norm"]):
            _fail(f"{what}.optimizer_step", f"must return a finite grad_norm and lr, got {out}")
        if int(backend.version) != version + 1:
            _fail(f"{what}.optimizer_step", f"version went {version} -> {backend.version}, expected +1")
        with torch.no_grad():
            moved, _ = backend.token_logprobs(batch, temperature=1.0)
        if torch.equal(moved, logp.detach()):
            _fail(f"{what}.optimizer_step", "the policy did not change")
        skipped = backend.optimizer_step(1.0, skip=True)
        if skipped.get("skipped") != 1.0 or int(backend.version) != version + 1:
            _fail(f"{what}.optimizer_step(skip=True)", "must change nothing and return skipped: 1.0")
        backend.load(folder)
        with torch.no_grad():
            restored, _ = backend.token_logprobs(batch, temperature=1.0)
        if int(backend.version) != version or not torch.allclose(restored, logp.detach(), atol=1e-6):
            _fail(f"{what}.load", "did not restore the saved policy and version")
        if optional(backend, Backend, "token_loss") is not None:
            _check_token_loss(what, backend, batch, folder)
    info = backend.describe()
    missing = {"model/parameters", "model/trainable_parameters", "model/device"} - set(info)
    if missing:
        _fail(f"{what}.describe", f"missing {sorted(missing)}")
    return {"vocab_size": vocab, "policy_tokens": n, "max_logprob_gap": gap}


def _check_token_loss(what: str, backend: Backend, batch: Any, folder: str) -> None:
    """``token_loss`` gives the loss, log-probs, entropy and gradient that ``token_logprobs`` and
    autograd give for the same row-separable loss (compared through ``optimizer_step``'s grad_norm)."""
    import torch

    n = int(batch.policy_index.numel())
    weights = torch.linspace(-1.0, 1.0, n)

    def loss_of(logp, entropy):
        return (logp * weights.to(logp)).sum() + 0.1 * (entropy * weights.flip(0).to(entropy)).sum()

    logp, entropy = backend.token_logprobs(batch, temperature=1.0, with_entropy=True)
    want = loss_of(logp, entropy)
    want.backward()
    want_norm = backend.optimizer_step(1e9)["grad_norm"]
    backend.load(folder)
    loss, got_logp, got_entropy = backend.token_loss(batch, loss_of, temperature=1.0, with_entropy=True)
    if not getattr(loss, "requires_grad", False) or tuple(getattr(loss, "shape", (None,))) != ():
        _fail(f"{what}.token_loss", "must return a scalar loss that carries a gradient")
    if got_entropy is None or got_logp.requires_grad:
        _fail(f"{what}.token_loss", "must return the detached log-probs and (asked for) entropy")
    gap = max(float((got_logp.float() - logp.detach().float()).abs().max()),
              float((got_entropy.float() - entropy.detach().float()).abs().max()),
              float((loss.detach().float() - want.detach().float()).abs()))
    if gap > 1e-4:
        _fail(f"{what}.token_loss", f"loss, log-probs or entropy differ from token_logprobs' by {gap:.2e}")
    loss.backward()
    got_norm = backend.optimizer_step(1e9)["grad_norm"]
    backend.load(folder)
    if not math.isclose(got_norm, want_norm, rel_tol=1e-3, abs_tol=1e-6):
        _fail(f"{what}.token_loss", f"gradient norm {got_norm:.6g}, but token_logprobs + autograd give {want_norm:.6g}")


def check_algorithm(algorithm: Any, backend: Backend, *, rewards: Sequence[float] = (0.0, 1.0, 0.0, 1.0)) -> Mapping[str, float]:
    """Assert that ``algorithm`` keeps the ``Algorithm`` contract on episodes sampled from
    ``backend`` (one task, ``group_size`` episodes per group, rewards cycling through
    ``rewards``); returns ``update``'s metrics."""
    what = f"algorithm {type(algorithm).__name__}"
    _check_members(what, algorithm, Algorithm)
    group = int(algorithm.group_size)
    if group < 1:
        _fail(what, f"group_size must be >= 1, got {group}")
    algorithm.setup(backend, total_steps=2, temperature=1.0)
    prompt, generations = _sample(backend, 2 * group, seed=11)
    task = Task(id="check", prompt=MESSAGES)
    trajectories = [_trajectory(prompt, g, task, i // group, i, rewards[i % len(rewards)])
                    for i, g in enumerate(generations)]
    batch = algorithm.prepare(trajectories)
    metrics = algorithm.update(backend, batch)
    if not isinstance(metrics, Mapping):
        _fail(f"{what}.update", f"must return a mapping of metrics, got {type(metrics).__name__}")
    bad = {k: v for k, v in metrics.items() if not isinstance(v, (int, float)) or not math.isfinite(float(v))}
    if bad:
        _fail(f"{what}.update", f"metrics must be finite numbers, got {bad}")
    state = algorithm.state_dict()
    algorithm.load_state_dict(state)
    return metrics
