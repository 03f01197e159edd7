"""Group advantages (GRPO / Dr. GRPO / RLOO): a Python loop over groups vs ours.

Rewards ``[n]`` with shuffled, non-contiguous group ids (``n / group_size`` groups).
Reports median time, speed-up and max abs difference between the two.

    python benchmarks/bench_advantages.py --device cpu --json results/advantages_cpu.json
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import base_parser, fmt_ms, median, print_table, time_fn, write_json  # noqa: E402

SHAPES = [(1024, 8), (8192, 16), (65536, 64)]  # (rollouts, group size)
QUICK_SHAPES = [(256, 8)]
MODES = ("grpo", "drgrpo", "rloo")


def loop_advantages(rewards, group_ids, mode: str, eps: float = 1e-6):
    """The usual implementation: a Python loop over the groups."""
    import torch

    out = torch.zeros_like(rewards)
    for g in torch.unique(group_ids).tolist():
        idx = (group_ids == g).nonzero().squeeze(1)
        r = rewards[idx]
        if len(idx) < 2:
            continue
        if mode == "grpo":
            out[idx] = (r - r.mean()) / (r.std() + eps)
        elif mode == "drgrpo":
            out[idx] = r - r.mean()
        else:
            out[idx] = (r - r.mean()) * len(idx) / (len(idx) - 1)
    return out


def main() -> None:
    import torch

    from agent_lightning.ops import group_advantages

    parser = base_parser(__doc__.splitlines()[0])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    repeats = args.repeats or (3 if args.quick else 7)

    results, rows = [], []
    for n, group_size in shapes:
        gen = torch.Generator().manual_seed(n)
        labels = torch.randperm(10 * n, generator=gen)[: n // group_size] * 3 + 11
        group_ids = labels.repeat_interleave(group_size)[torch.randperm(n, generator=gen)].to(args.device)
        rewards = torch.randn(n, generator=gen).to(args.device)
        for mode in MODES:
            t_loop = median(time_fn(lambda: loop_advantages(rewards, group_ids, mode), args.device, repeats))
            t_ours = median(time_fn(lambda: group_advantages(rewards, group_ids, mode=mode), args.device, repeats))
            diff = (loop_advantages(rewards, group_ids, mode) - group_advantages(rewards, group_ids, mode=mode))
            err = diff.abs().max().item()
            results.append({"n": n, "group_size": group_size, "mode": mode, "loop_s": t_loop, "ours_s": t_ours,
                            "max_abs_diff": err})
            rows.append([n, group_size, mode, fmt_ms(t_loop), fmt_ms(t_ours), f"{t_loop / t_ours:.1f}x", f"{err:.1e}"])
    print_table(
        f"group advantages, device={args.device}, median of {repeats}",
        ["n", "group", "mode", "loop ms", "ours ms", "speed-up", "max abs diff"],
        rows,
    )
    write_json(args.json, "bench_advantages", args.device, results)


if __name__ == "__main__":
    main()
