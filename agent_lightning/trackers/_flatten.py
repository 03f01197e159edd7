"""What the trackers send out: the config flattened to ``a.b.c`` keys with secrets masked,
and metrics reduced to plain floats.

Every tracker that ships the config (or text derived from the run) somewhere passes it
through :func:`scrub` first, so that an API key never reaches a tracking server, an event
file or an artifact. Masked are:

* values under a key whose last word is secret-like (``api_key``, ``hf_token``,
  ``client_secret``, ``db_password``, ``WANDB_API_KEY``; not ``max_new_tokens`` or ``keys``);
* the password of credentials written into a URL (``https://user:pw@host``);
* anywhere in any string, the value of a secret-like environment variable
  (``WANDB_API_KEY``, ``MLFLOW_TRACKING_TOKEN``, ``HF_TOKEN``...).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Iterable, Mapping

MASK = "***"

SECRET_WORDS = frozenset({"key", "apikey", "token", "secret", "password", "passwd", "pwd", "credential",
                          "credentials", "auth", "authorization"})
"""A config key is secret when its last word (split at ``_ - . `` and camelCase) is one of these."""

SECRET_ENV_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "AUTH")
"""An environment variable whose name contains one of these holds a secret value."""

MIN_SECRET_LENGTH = 8  # shorter values ("1", "false") are too common to mask wherever they appear

_WORD = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
_URL_CREDENTIALS = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/@\s:]+):(?P<pw>[^/@\s]+)@")


def is_secret_key(key: str) -> bool:
    """Whether a config key names a secret (by its last word)."""
    words = _WORD.findall(str(key))
    return bool(words) and words[-1].lower() in SECRET_WORDS


def secret_values(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """Values of the secret-like environment variables, longest first (so that a secret
    containing another is masked whole)."""
    environ = os.environ if environ is None else environ
    found = {value for name, value in environ.items()
             if any(marker in name.upper() for marker in SECRET_ENV_MARKERS) and len(value) >= MIN_SECRET_LENGTH}
    return tuple(sorted(found, key=len, reverse=True))


def scrub_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with URL passwords and every occurrence of ``secrets`` masked."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)


def scrub(data: Any, environ: Mapping[str, str] | None = None) -> Any:
    """A copy of ``data`` (nested dicts/lists of plain values) with every secret masked."""
    secrets = secret_values(environ)

    def walk(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: (MASK if is_secret_key(k) and v not in (None, "") else walk(v)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [walk(v) for v in value]
        if isinstance(value, str):
            return scrub_text(value, secrets)
        return value

    return walk(data)


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config to ``{"section.key": scalar}``. A list of scalars becomes one JSON string
    (``"[1, 2]"``); a list holding mappings is indexed (``trackers.0.name``)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, path) if value else {path: "{}"})
        elif isinstance(value, (list, tuple)) and any(isinstance(v, Mapping) for v in value):
            out.update(flatten({str(i): v for i, v in enumerate(value)}, path))
        elif isinstance(value, (list, tuple)):
            out[path] = json.dumps(list(value))
        else:
            out[path] = value
    return out


def flat_config(config: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The config as trackers log it: scrubbed, then flattened."""
    return flatten(scrub(config, environ))


def numeric_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries of ``metrics`` as floats (bools count; None and text are dropped).
    Non-finite values are kept: each tracker decides how to store them."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, (bool, int, float)):
            out[key] = float(value)
    return out


def trajectories_due(step: int, every: int | None, config: Mapping[str, Any]) -> bool:
    """Whether sampled trajectories are logged at ``step``: every ``every`` steps (default:
    at each evaluation, ``trainer.eval_every``, else every step; 0: never), and at the last."""
    trainer = config.get("trainer", {}) if isinstance(config, Mapping) else {}
    if every is None:
        every = int(trainer.get("eval_every") or 1)
    if every <= 0:
        return False
    return step % every == 0 or step == int(trainer.get("steps", -1))


def render_conversation(record: Mapping[str, Any]) -> str:
    """One trajectory record (as written to ``trajectories/step-N.jsonl``) as plain text:
    the prompt, then each policy action and the environment's answer."""
    lines = [f"[prompt] {record.get('prompt', '')}"]
    for turn in record.get("turns", []):
        lines.append(f"[policy] {turn.get('action', '')}")
        if turn.get("observation"):
            lines.append(f"[env] {turn['observation']}")
    lines.append(f"[reward] {record.get('reward')}  success={record.get('success')}"
                 + (f"  failure={record['failure']}" if record.get("failure") else ""))
    return "\n".join(lines)
