"""Benchmark: padding-free training and the packing machinery of agent_lightning._C.

Three sections, each printed as a side-by-side table (and all of them with ``--json``):

1. **Training step**, padded vs packed: forward + backward through the decoder
   (``agent_lightning.backends.transformers.modeling``) and a next-token log-prob loss, for the quickstart model
   (tiny Llama) and a 135M-class config (SmolLM2-135M shape; ``--layers`` cuts its depth for
   a quicker run). Batch 32, lengths uniform in [16, 512], seeded. The padded step runs the
   model's own SDPA attention on ``[B, Tmax]`` with an attention mask and applies the loss to
   the valid positions only (so the padded baseline does not pay the LM head on padding).
   The table also gives the largest |log-prob difference| between the two paths.
2. **pack / unpack throughput** of the per-token trajectory fields: C++ extension vs the
   vectorised torch reference vs a plain per-sequence Python loop.
3. **Packed GAE**: C++ vs the per-timestep torch loop over a padded batch (and the
   vectorised torch path of ``agent_lightning.ops.gae`` when present).

Usage::

    python benchmarks/bench_packing.py                      # everything, full 135M depth (slow on CPU)
    python benchmarks/bench_packing.py --layers 4 --json out.json
    python benchmarks/bench_packing.py --sections pack,gae
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Any, Callable

import torch

from agent_lightning.backends.transformers import modeling
from agent_lightning.ops import packing

MODELS = {
    # The quickstart policy: what `alightning train` runs on the guess-number preset.
    "quickstart": dict(vocab_size=40, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True),
    # SmolLM2-135M's shape (random init; no weights are downloaded).
    "135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                 num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True),
}


# --------------------------------------------------------------------------- timing


def timeit(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    cells = [header] + [[c if isinstance(c, str) else f"{c:.4g}" if isinstance(c, float) else str(c) for c in r]
                        for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    for i, r in enumerate(cells):
        print("  " + "  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths))))
        if i == 0:
            print("  " + "  ".join("-" * w for w in widths))


def random_lengths(batch: int, low: int, high: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high + 1, (batch,), generator=g)


# --------------------------------------------------------------------------- 1. training step


def build_model(name: str, layers: int | None, seed: int):
    import transformers

    cfg = dict(MODELS[name])
    if layers is not None:
        cfg["num_hidden_layers"] = layers
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(**cfg, max_position_embeddings=1024, attn_implementation="sdpa")
    return transformers.LlamaForCausalLM(config).float().train(), cfg


def next_token_targets(ids: torch.Tensor, cu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """targets[t] = ids[t+1] within a sequence; valid is False on each sequence's last token."""
    targets = torch.roll(ids, -1)
    valid = torch.ones_like(ids, dtype=torch.bool)
    valid[(cu[1:] - 1).long()] = False
    return targets, valid


def _chunk_logprobs(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(h @ w.t(), dim=-1).gather(-1, t[:, None])[:, 0]


def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int = 2048):
    """log p(target) per row, LM head applied in checkpointed chunks (no [N, V] logits kept)."""
    from torch.utils.checkpoint import checkpoint

    parts = []
    for s in range(0, hidden.shape[0], chunk):
        parts.append(checkpoint(_chunk_logprobs, hidden[s : s + chunk], weight, targets[s : s + chunk],
                                use_reentrant=False))
    return torch.cat(parts)


def packed_hidden(model, ids, layout):
    return modeling.final_hidden_states(model, ids, layout.position_ids, layout.cu_seqlens)


def padded_hidden_grid(model, padded_ids, attn_mask):
    """[B, Tmax, H] from the model's own (SDPA) attention with a padding mask."""
    return modeling.decoder(model)(input_ids=padded_ids, attention_mask=attn_mask, use_cache=False).last_hidden_state


def padded_hidden(model, ids, layout):
    padded = packing.pad_packed(ids, layout.cu_seqlens)
    mask = packing.pad_packed(torch.ones_like(ids), layout.cu_seqlens)
    return packing.unpad(padded_hidden_grid(model, padded, mask), layout.cu_seqlens)


def bench_training(args) -> list[dict]:
    results = []
    lengths = random_lengths(args.batch, args.min_len, args.max_len, args.seed)
    layout = packing.pack_lengths(lengths)
    total = int(layout.cu_seqlens[-1])
    g = torch.Generator().manual_seed(args.seed + 1)
    rows = []
    for name in args.models:
        layers = args.layers if name == "135m" else None
        model, cfg = build_model(name, layers, args.seed)
        ids = torch.randint(0, cfg["vocab_size"], (total,), generator=g)
        targets, valid = next_token_targets(ids, layout.cu_seqlens)
        weight, _ = modeling.lm_head(model)

        def packed_step():
            model.zero_grad(set_to_none=True)
            hidden = packed_hidden(model, ids, layout)
            loss = -token_logprobs(hidden[valid], weight, targets[valid]).mean()
            loss.backward()
            return loss

        def padded_step():
            # What a trainer without packing does: the whole [B, Tmax] grid goes through the
            # decoder, and (--padded-head all) through the LM head, masked in the loss.
            model.zero_grad(set_to_none=True)
            hidden = padded_hidden_grid(model, padded_ids, attn_mask)  # [B, Tmax, H]
            if args.padded_head == "all":
                logp = token_logprobs(hidden.flatten(0, 1), weight, padded_targets.flatten())
                loss = -(logp * padded_valid.flatten()).sum() / padded_valid.sum()
            else:
                logp = token_logprobs(packing.unpad(hidden, layout.cu_seqlens)[valid], weight, targets[valid])
                loss = -logp.mean()
            loss.backward()
            return loss

        with torch.no_grad():
            # Padded first: the first packed call switches the model to "al_packed" attention, which
            # hands padded batches to transformers' own SDPA from then on (same computation).
            lp_padded = token_logprobs(padded_hidden(model, ids, layout)[valid], weight, targets[valid])
            lp_packed = token_logprobs(packed_hidden(model, ids, layout)[valid], weight, targets[valid])
        max_diff = float((lp_packed - lp_padded).abs().max())
        padded_ids = packing.pad_packed(ids, layout.cu_seqlens)
        attn_mask = packing.pad_packed(torch.ones_like(ids), layout.cu_seqlens)
        padded_targets = packing.pad_packed(targets, layout.cu_seqlens)
        padded_valid = packing.pad_packed(valid, layout.cu_seqlens).float()
        loss_padded = padded_step()
        loss_packed = packed_step()
        loss_diff = float((loss_padded - loss_packed).detach().abs())
        t_padded = timeit(padded_step, args.repeats, warmup=args.warmup)
        t_packed = timeit(packed_step, args.repeats, warmup=args.warmup)
        padded_tokens = args.batch * layout.max_seqlen
        res = dict(section="train_step", model=name, layers=cfg["num_hidden_layers"], batch=args.batch,
                   tokens=total, padded_tokens=padded_tokens, padded_s=t_padded, packed_s=t_packed,
                   speedup=t_padded / t_packed, max_abs_logprob_diff=max_diff, loss_abs_diff=loss_diff,
                   padded_head=args.padded_head)
        results.append(res)
        rows.append([f"{name} ({cfg['num_hidden_layers']} layers)", f"{total}/{padded_tokens}", t_padded, t_packed,
                     f"{t_padded / t_packed:.2f}x", f"{max_diff:.2e}", f"{loss_diff:.1e}"])
    table(f"Training step (fwd+bwd), batch {args.batch}, lengths U[{args.min_len},{args.max_len}], "
          f"median of {args.repeats}, seconds (padded LM head: {args.padded_head} positions)",
          ["model", "tokens real/padded", "padded s", "packed s", "speedup", "max |dlogp|", "|dloss|"], rows)
    return results


# --------------------------------------------------------------------------- 2. pack / unpack


FIELDS = {"token_ids": torch.int64, "policy_mask": torch.bool, "sample_logprobs": torch.float32,
          "advantages": torch.float32, "turn_index": torch.int32}


def python_pack(seqs):
    """Per-sequence Python loop (what a trainer without packing ops writes)."""
    lengths = [len(s) for s in seqs]
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    flat = seqs[0].new_empty((cu[-1], *seqs[0].shape[1:]))
    for b, s in enumerate(seqs):
        flat[cu[b] : cu[b + 1]] = s
    return flat, torch.tensor(cu, dtype=torch.int32)


def python_pack_lengths(lengths):
    cu, pos, seq = [0], [], []
    for b, n in enumerate(lengths.tolist()):
        cu.append(cu[-1] + n)
        pos.append(torch.arange(n))
        seq.append(torch.full((n,), b, dtype=torch.int32))
    return torch.tensor(cu, dtype=torch.int32), torch.cat(pos), torch.cat(seq)


def python_unpack(flat, cu):
    c = cu.tolist()
    return [flat[c[b] : c[b + 1]] for b in range(len(c) - 1)]


def python_pad(flat, cu):
    c = cu.tolist()
    lens = [c[b + 1] - c[b] for b in range(len(c) - 1)]
    out = flat.new_zeros((len(lens), max(lens), *flat.shape[1:]))
    for b, n in enumerate(lens):
        out[b, :n] = flat[c[b] : c[b + 1]]
    return out


def python_unpad(padded, cu):
    c = cu.tolist()
    return torch.cat([padded[b, : c[b + 1] - c[b]] for b in range(len(c) - 1)])


def bench_pack(args) -> list[dict]:
    from agent_lightning.ops.dispatch import cpp_extension

    C = cpp_extension()
    results, rows = [], []
    for batch in args.pack_batches:
        lengths = random_lengths(batch, args.min_len, args.max_len, args.seed)
        total = int(lengths.sum())
        g = torch.Generator().manual_seed(args.seed)
        fields = {}
        for name, dtype in FIELDS.items():
            if dtype == torch.bool:
                fields[name] = [torch.rand(int(n), generator=g) < 0.5 for n in lengths]
            elif dtype.is_floating_point:
                fields[name] = [torch.randn(int(n), generator=g) for n in lengths]
            else:
                fields[name] = [torch.randint(0, 1000, (int(n),), generator=g).to(dtype) for n in lengths]
        packed = {k: packing.pack_torch(v) for k, v in fields.items()}
        cu = packed["token_ids"][1]
        padded = {k: packing.pad_packed_torch(f, cu) for k, (f, _) in packed.items()}
        impls: dict[str, dict[str, Callable[[], Any]]] = {
            "pack_lengths": {
                "python": lambda: python_pack_lengths(lengths),
                "torch": lambda: packing.pack_lengths_torch(lengths),
                "cpp": (lambda: C.pack_lengths(lengths)) if C else None,
            },
            "pack (5 fields)": {
                "python": lambda: [python_pack(v) for v in fields.values()],
                "torch": lambda: [packing.pack_torch(v) for v in fields.values()],
                "cpp": (lambda: [C.pack(v) for v in fields.values()]) if C else None,
            },
            "unpack (5 fields)": {
                "python": lambda: [python_unpack(f, cu) for f, _ in packed.values()],
                "torch": lambda: [packing.unpack_torch(f, cu) for f, _ in packed.values()],
                "cpp": (lambda: [C.unpack(f, cu) for f, _ in packed.values()]) if C else None,
            },
            "pad_packed (5 fields)": {
                "python": lambda: [python_pad(f, cu) for f, _ in packed.values()],
                "torch": lambda: [packing.pad_packed_torch(f, cu) for f, _ in packed.values()],
                "cpp": (lambda: [C.pad_packed(f, cu, 0.0) for f, _ in packed.values()]) if C else None,
            },
            "unpad (5 fields)": {
                "python": lambda: [python_unpad(p, cu) for p in padded.values()],
                "torch": lambda: [packing.unpad_torch(p, cu) for p in padded.values()],
                "cpp": (lambda: [C.unpad(p, cu) for p in padded.values()]) if C else None,
            },
        }
        for op, fns in impls.items():
            t = {k: (timeit(f, args.pack_repeats, warmup=2) if f else float("nan")) for k, f in fns.items()}
            res = dict(section="pack", op=op, batch=batch, tokens=total,
                       **{f"{k}_us": v * 1e6 for k, v in t.items()},
                       cpp_vs_torch=t["torch"] / t["cpp"], cpp_vs_python=t["python"] / t["cpp"])
            results.append(res)
            rows.append([op, batch, total, t["python"] * 1e6, t["torch"] * 1e6, t["cpp"] * 1e6,
                         f"{t['python'] / t['cpp']:.1f}x", f"{t['torch'] / t['cpp']:.1f}x",
                         f"{total / t['cpp'] / 1e6:.0f}"])
    table(f"Packing ops, lengths U[{args.min_len},{args.max_len}], median of {args.pack_repeats}, microseconds",
          ["op", "B", "tokens", "python us", "torch us", "C++ us", "C++ vs py", "C++ vs torch", "C++ Mtok/s"], rows)
    return results


# --------------------------------------------------------------------------- 3. GAE


def gae_timestep_loop(rewards, values, mask, gamma, lam):
    """Per-timestep GAE over padded [B, T], masked positions skipped (the classic PPO loop)."""
    adv = torch.zeros_like(rewards)
    next_v = torch.zeros(rewards.shape[0])
    next_a = torch.zeros(rewards.shape[0])
    for t in range(rewards.shape[1] - 1, -1, -1):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        a = delta + gamma * lam * next_a
        adv[:, t] = torch.where(m, a, 0.0)
        next_v = torch.where(m, values[:, t], next_v)
        next_a = torch.where(m, a, next_a)
    return adv, torch.where(mask, adv + values, 0.0)


def bench_gae(args) -> list[dict]:
    from agent_lightning.ops.dispatch import cpp_extension

    C = cpp_extension()
    try:
        from agent_lightning.ops.gae import gae_packed_torch
    except ImportError:  # the ops.gae module is optional for this script
        gae_packed_torch = None
    results, rows = [], []
    gamma, lam = 0.99, 0.95
    for batch in args.pack_batches:
        lengths = random_lengths(batch, args.min_len, args.max_len, args.seed)
        layout = packing.pack_lengths(lengths)
        cu = layout.cu_seqlens
        total = int(cu[-1])
        g = torch.Generator().manual_seed(args.seed)
        rewards = torch.randn(total, generator=g)
        values = torch.randn(total, generator=g)
        mask = torch.rand(total, generator=g) < 0.7  # observation tokens interleaved
        pr, pv, pm = (packing.pad_packed_torch(x, cu) for x in (rewards, values, mask))
        adv_loop, _ = gae_timestep_loop(pr, pv, pm, gamma, lam)
        t_loop = timeit(lambda: gae_timestep_loop(pr, pv, pm, gamma, lam), args.gae_repeats)
        t_cpp = diff = float("nan")
        if C is not None:
            adv_cpp, _ = C.gae_packed(rewards, values, mask, cu, gamma, lam)
            diff = float((packing.pad_packed_torch(adv_cpp, cu) - adv_loop).abs().max())
            t_cpp = timeit(lambda: C.gae_packed(rewards, values, mask, cu, gamma, lam), args.gae_repeats, warmup=2)
        t_vec = float("nan")
        if gae_packed_torch is not None:
            try:
                t_vec = timeit(lambda: gae_packed_torch(rewards, values, mask, cu, gamma, lam), args.gae_repeats)
            except TypeError:  # a different signature than expected: leave it out
                t_vec = float("nan")
        results.append(dict(section="gae", batch=batch, tokens=total, loop_ms=t_loop * 1e3, cpp_ms=t_cpp * 1e3,
                            torch_vectorised_ms=t_vec * 1e3, speedup_vs_loop=t_loop / t_cpp, max_abs_diff=diff))
        rows.append([batch, total, t_loop * 1e3, t_vec * 1e3, t_cpp * 1e3, f"{t_loop / t_cpp:.0f}x", f"{diff:.1e}"])
    table(f"Packed GAE (gamma={gamma}, lam={lam}, 30% observation tokens), median, milliseconds",
          ["B", "tokens", "torch loop ms", "torch vectorised ms", "C++ ms", "C++ vs loop", "max |dA|"], rows)
    return results


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sections", default="train,pack,gae", help="comma list of train, pack, gae")
    p.add_argument("--models", default="quickstart,135m", help="comma list of quickstart, 135m")
    p.add_argument("--layers", type=int, default=None,
                   help="decoder layers of the 135m config (default: its full 30; fewer for a quicker run)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--min-len", type=int, default=16)
    p.add_argument("--max-len", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3, help="timed training steps per path")
    p.add_argument("--warmup", type=int, default=1, help="untimed training steps per path before timing")
    p.add_argument("--padded-head", choices=("all", "valid"), default="all",
                   help="padded baseline applies the LM head to every [B, Tmax] position (all, what an "
                        "unpacked trainer does) or only to the real tokens (valid, a stricter baseline)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--pack-batches", default="32,1024", help="batch sizes for the pack and GAE sections")
    p.add_argument("--pack-repeats", type=int, default=30)
    p.add_argument("--gae-repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.pack_batches = [int(b) for b in args.pack_batches.split(",") if b]
    sections = {s.strip() for s in args.sections.split(",")}
    if args.threads:
        torch.set_num_threads(args.threads)

    from agent_lightning.ops.dispatch import cpp_extension

    C = cpp_extension()
    env = dict(torch=torch.__version__, threads=torch.get_num_threads(), machine=platform.machine(),
               processor=platform.processor() or platform.machine(),
               extension=C is not None, openmp=bool(C and C.openmp_enabled))
    print(f"torch {env['torch']}, {env['threads']} threads, C++ extension: {env['extension']} "
          f"(OpenMP: {env['openmp']})")
    out: dict[str, Any] = dict(env=env, args={k: v for k, v in vars(args).items()}, results=[])
    if "train" in sections:
        out["results"] += bench_training(args)
    if "pack" in sections:
        out["results"] += bench_pack(args)
    if "gae" in sections:
        out["results"] += bench_gae(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
        print(f"\nwrote {args.json}")
    return out


if __name__ == "__main__":
    main()
