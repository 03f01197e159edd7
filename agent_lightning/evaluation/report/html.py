"""The one-page HTML summary of a run: self-contained (PNG plots inlined as base64, CSS
inline, no script, no external asset), so it can be mailed or archived as one file.

Sections: the headline numbers, the checkpoint evaluation table, the plots, a few sampled
trajectories rendered as conversations (policy tokens, which are trained on, in green
bubbles; masked prompt and observation tokens in grey hatched bubbles, plus the token
strip coloured by the policy mask), and the resolved config.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any, Sequence

from agent_lightning.evaluation.report.plots import Plot
from agent_lightning.evaluation.report.trajectories import headline, segments, tokens

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #202124; background: #ffffff; }
header { background: #1a237e; color: #ffffff; padding: 18px 32px; }
header h1 { margin: 0 0 4px 0; font-size: 24px; }
header p { margin: 0; opacity: 0.85; font-size: 13px; }
main { padding: 8px 32px 32px 32px; max-width: 1400px; }
h2 { border-bottom: 2px solid #1a237e; padding-bottom: 4px; margin-top: 28px; }
.cards { display: flex; gap: 16px; flex-wrap: wrap; }
.card { border: 1px solid #dadce0; border-radius: 8px; padding: 12px 18px; min-width: 220px; }
.card .value { font-size: 22px; font-weight: 600; }
.card .label { font-size: 12px; color: #5f6368; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #dadce0; padding: 4px 10px; text-align: right; }
th { background: #e8eaf6; }
td:first-child, th:first-child { text-align: left; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(460px, 1fr)); gap: 12px; }
.plots figure { margin: 0; border: 1px solid #dadce0; border-radius: 6px; padding: 6px; }
.plots img { width: 100%; height: auto; display: block; }
.plots figcaption { font-size: 12px; color: #5f6368; }
.traj { border: 1px solid #dadce0; border-radius: 8px; padding: 10px 14px; margin: 12px 0; }
.traj h3 { font-size: 14px; margin: 0 0 8px 0; font-family: ui-monospace, monospace; }
.traj.success h3 { color: #1b5e20; } .traj.failure h3 { color: #b71c1c; }
.msg { border-radius: 8px; padding: 6px 10px; margin: 6px 0; font-family: ui-monospace, monospace; font-size: 13px;
       white-space: pre-wrap; word-break: break-word; max-width: 90%; }
.msg .who { display: block; font-family: system-ui, sans-serif; font-size: 11px; font-weight: 600; margin-bottom: 2px; }
.msg.policy { background: #c8e6c9; border: 2px solid #2e7d32; color: #0d3b12; margin-left: 8%; }
.msg.masked { color: #5f6368; border: 1px dashed #9aa0a6;
              background: repeating-linear-gradient(45deg, #f1f3f4, #f1f3f4 6px, #e8eaed 6px, #e8eaed 12px); }
.tokens { line-height: 1.9; margin-top: 6px; }
.tok { font-family: ui-monospace, monospace; font-size: 11px; padding: 1px 3px; margin: 0 1px; border-radius: 3px; }
.tok.policy { background: #2e7d32; color: #ffffff; }
.tok.masked { background: #e8eaed; color: #5f6368; text-decoration: line-through; }
.legend span { margin-right: 14px; }
pre.config { background: #f8f9fa; border: 1px solid #dadce0; padding: 10px; font-size: 12px; overflow-x: auto; }
.note { color: #5f6368; font-size: 13px; }
"""

MAX_STRIP_TOKENS = 400


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _image(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _summary_cards(records: Sequence[dict[str, Any]], results: dict[str, Any] | None, info: dict[str, Any]) -> str:
    cards = []
    rows = (results or {}).get("checkpoints", [])
    if len(rows) >= 2 and rows[0]["step"] == 0:
        base, last = rows[0], rows[-1]
        for label, r in (("base model (step 0)", base), (f"step {last['step']}", last)):
            low, high = r["success_ci"]
            cards.append((f"{r['success_rate']:.3f}", f"held-out success, {label}; 95% CI [{low:.3f}, {high:.3f}], "
                                                      f"{r['episodes']} episodes"))
    else:
        evals = [r for r in records if isinstance(r.get("eval/success_rate"), (int, float))]
        if evals:
            first, last = evals[0], evals[-1]
            cards.append((f"{first['eval/success_rate']:.2f} → {last['eval/success_rate']:.2f}",
                          f"held-out success during training, step {first['step']} → {last['step']}"))
    steps = max((int(r.get("step", 0)) for r in records if any(k.startswith("train/") for k in r)), default=0)
    cards.append((str(steps), "training steps logged"))
    if isinstance(info.get("model/parameters"), int):
        cards.append((f"{info['model/parameters']:,}", f"parameters ({info.get('model/trainable_parameters', 0):,} trainable)"))
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="value">{_e(v)}</div><div class="label">{_e(label)}</div></div>' for v, label in cards
    ) + "</div>"


def _eval_table(results: dict[str, Any] | None) -> str:
    rows = (results or {}).get("checkpoints", [])
    if not rows:
        return '<p class="note">No checkpoint evaluation yet: run <code>alightning eval RUN_DIR</code>.</p>'
    settings = results.get("settings", {})
    ks = sorted({int(k) for r in rows for k in r["pass_at_k"]})
    head = ["checkpoint", "episodes", "success", "95% CI", "mean reward", *(f"pass@{k}" for k in ks),
            "turns", "tokens / episode", "failed"]
    body = []
    for r in rows:
        low, high = r["success_ci"]
        cells = ["base (step 0)" if r["step"] == 0 else f"step {r['step']}", r["episodes"], f"{r['success_rate']:.3f}",
                 f"[{low:.3f}, {high:.3f}]", f"{r['mean_reward']:.3f}",
                 *(f"{r['pass_at_k'].get(str(k), float('nan')):.3f}" for k in ks),
                 f"{r['mean_turns']:.2f}", f"{r['tokens_per_episode']:.1f}", r["failed_episodes"]]
        body.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    caption = (f"{_e(settings.get('environment', {}).get('name', '?'))}, {_e(settings.get('split', '?'))} split, "
               f"eval_temperature {_e(settings.get('eval_temperature', '?'))}")
    return (f'<p class="note">{caption}</p><table><tr>' + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"
            + "".join(body) + "</table>")


def _plots(plots: Sequence[Plot]) -> str:
    figures = [f'<figure><img alt="{_e(p.title)}" src="{_image(p.path)}"><figcaption>{_e(p.title)} '
               f'({_e(", ".join(p.metrics))})</figcaption></figure>' for p in plots if p.path is not None]
    missing = [p for p in plots if p.path is None]
    note = ""
    if missing:
        note = '<p class="note">Not in this run: ' + "; ".join(
            f"{_e(p.title)} ({_e(', '.join(p.metrics))})" for p in missing) + ".</p>"
    return f'<div class="plots">{"".join(figures)}</div>{note}'


def _conversation(record: dict[str, Any]) -> str:
    parts = []
    strip = []
    for seg in segments(record):
        count = f" · {tokens(len(seg.token_ids))}" if seg.token_ids else ""
        if seg.kind == "policy":
            reward = f" · step reward {seg.reward:g}" if seg.reward else ""
            who = f"policy (sampled, trained on){count}{reward}"
        else:
            who = f"{seg.kind} (masked, not trained on){count}"
        css = "policy" if seg.kind == "policy" else "masked"
        parts.append(f'<div class="msg {css}"><span class="who">{_e(who)}</span>{_e(seg.text)}</div>')
        strip.extend((css, t) for t in seg.token_ids)
    tokens_html = ""
    if strip:
        shown = strip[:MAX_STRIP_TOKENS]
        more = f" … {len(strip) - len(shown)} more" if len(strip) > len(shown) else ""
        tokens_html = ('<div class="tokens">' + "".join(f'<span class="tok {c}">{t}</span>' for c, t in shown)
                       + _e(more) + "</div>")
    state = "failure" if record.get("failure") else ("success" if record.get("success") else "")
    return f'<div class="traj {state}"><h3>{_e(headline(record))}</h3>{"".join(parts)}{tokens_html}</div>'


def _trajectories(groups: Sequence[tuple[int, Sequence[dict[str, Any]]]]) -> str:
    if not groups:
        return '<p class="note">No trajectories logged (trainer.log_trajectories = 0).</p>'
    legend = ('<p class="legend note"><span class="msg policy" style="padding:1px 6px">policy tokens: sampled, '
              'trained on</span><span class="msg masked" style="padding:1px 6px">masked tokens: prompt and '
              'environment observations, not trained on</span></p>')
    out = [legend]
    for step, records in groups:
        out.append(f"<h3>step {step}</h3>")
        out.extend(_conversation(r) for r in records)
    return "".join(out)


def render(*, title: str, subtitle: str, records: Sequence[dict[str, Any]], results: dict[str, Any] | None,
           info: dict[str, Any], plots: Sequence[Plot], trajectories: Sequence[tuple[int, Sequence[dict[str, Any]]]],
           config_text: str) -> str:
    """The whole page as a string."""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>
<body><header><h1>{_e(title)}</h1><p>{_e(subtitle)}</p></header><main>
<h2>Summary</h2>{_summary_cards(records, results, info)}
<h2>Checkpoints</h2>{_eval_table(results)}
<h2>Training curves</h2>{_plots(plots)}
<h2>Sampled trajectories</h2>{_trajectories(trajectories)}
<h2>Configuration</h2><pre class="config">{_e(config_text)}</pre>
</main></body></html>
"""
