"""GAE: the usual per-timestep torch loop vs ``agent_lightning.ops.gae``'s paths.

Inputs are padded ``[B, T]`` with a random mask (80 % valid, interior zeros included), so
every path must skip masked positions while carrying the recursion across them.

Methods: ``loop`` (reverse loop over T on ``[B]`` vectors, mask-carrying like verl's
multi-turn GAE), ``torch`` (our vectorised torch path), ``cpp`` (``agent_lightning._C``,
when built), ``triton`` (CUDA), and ``auto`` (whatever ``ops.gae`` dispatches to). Reported:
median time, speed-up over the loop, and max abs error vs a float64 reference.

    python benchmarks/bench_gae.py --device cpu --json results/gae_cpu.json
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import base_parser, fmt_ms, median, print_table, time_fn, write_json  # noqa: E402

SHAPES = [(256, 2048), (1024, 512)]
QUICK_SHAPES = [(16, 128)]
GAMMA, LAM = 0.99, 0.95


def loop_gae(rewards, values, mask, gamma: float, lam: float):
    """The usual implementation: one step of the recursion per time step, ``[B]`` at a time."""
    import torch

    batch, length = rewards.shape
    adv = torch.zeros_like(rewards)
    next_value = torch.zeros(batch, dtype=rewards.dtype, device=rewards.device)
    next_adv = torch.zeros_like(next_value)
    for t in reversed(range(length)):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        a = delta + gamma * lam * next_adv
        next_adv = torch.where(m, a, next_adv)
        next_value = torch.where(m, values[:, t], next_value)
        adv[:, t] = torch.where(m, a, 0.0)
    return adv, torch.where(mask, adv + values, 0.0)


def make_case(batch: int, length: int, device: str, seed: int = 0):
    import torch

    gen = torch.Generator().manual_seed(seed)
    rewards = (torch.randn(batch, length, generator=gen) * 0.1).to(device)
    values = torch.randn(batch, length, generator=gen).to(device)
    mask = (torch.rand(batch, length, generator=gen) < 0.8).to(device)
    return rewards, values, mask


def run_method(method: str, rewards, values, mask):
    import torch

    from agent_lightning.ops import dispatch
    from agent_lightning.ops.gae import gae, gae_packed_torch

    if method == "loop":
        return loop_gae(rewards, values, mask, GAMMA, LAM)
    if method == "auto":
        return gae(rewards, values, mask, gamma=GAMMA, lam=LAM)
    batch, length = rewards.shape
    cu = torch.arange(batch + 1, dtype=torch.int32, device=rewards.device) * length
    flat = (rewards.reshape(-1), values.reshape(-1), mask.reshape(-1))
    if method == "torch":
        adv, ret = gae_packed_torch(*flat, cu, GAMMA, LAM)
    elif method == "cpp":
        adv, ret = dispatch.cpp_extension().gae_packed(*flat, cu, GAMMA, LAM)
    elif method == "triton":
        from agent_lightning.kernels.gae import gae_packed_triton

        adv, ret = gae_packed_triton(*flat, cu, GAMMA, LAM)
    else:
        raise ValueError(f"unknown method {method!r}")
    return adv.view(batch, length), ret.view(batch, length)


def available(method: str, device: str) -> str | None:
    from agent_lightning.ops import dispatch

    if method == "cpp":
        ext = dispatch.cpp_extension()
        if ext is None:
            return "agent_lightning._C not built"
        if device == "cuda" and not getattr(ext, "cuda_enabled", False):
            return "extension built without CUDA"
    if method == "triton":
        ok, why = dispatch.triton_usable(device)
        if not ok:
            return why
    return None


def main() -> None:
    import torch

    parser = base_parser(__doc__.splitlines()[0])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    repeats = args.repeats or (3 if args.quick else 7)
    methods = ["loop", "torch", "cpp", "triton", "auto"]

    results, rows = [], []
    for batch, length in shapes:
        case = make_case(batch, length, args.device)
        ref_adv, ref_ret = loop_gae(*(x.double() if x.dtype != torch.bool else x for x in case), GAMMA, LAM)
        loop_time = None
        for method in methods:
            why = available(method, args.device)
            if why is not None:
                results.append({"method": method, "shape": [batch, length], "skipped": why})
                rows.append([f"{batch}x{length}", method, why, "", ""])
                continue
            times = time_fn(lambda: run_method(method, *case), args.device, repeats, warmup=1)
            adv, ret = run_method(method, *case)
            err = max((adv.double() - ref_adv).abs().max().item(), (ret.double() - ref_ret).abs().max().item())
            t = median(times)
            loop_time = t if method == "loop" else loop_time
            results.append({"method": method, "shape": [batch, length], "times_s": times, "median_s": t, "max_abs_err": err})
            speedup = f"{loop_time / t:.1f}x" if loop_time else "-"
            rows.append([f"{batch}x{length}", method, fmt_ms(t), speedup, f"{err:.2e}"])
    print_table(
        f"GAE (gamma={GAMMA}, lam={LAM}), padded with interior mask zeros, device={args.device}, "
        f"median of {repeats}, torch threads={torch.get_num_threads()}",
        ["BxT", "method", "ms", "vs loop", "max abs err vs f64"],
        rows,
    )
    write_json(args.json, "bench_gae", args.device, results)


if __name__ == "__main__":
    main()
