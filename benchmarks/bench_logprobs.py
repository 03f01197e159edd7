"""Token log-probs from hidden states, forward + backward: ours vs the usual ways.

Methods (each computes per-token log-probs of ``targets`` from ``hidden [N, H]`` and the
lm-head ``weight [V, H]``, then back-propagates a random per-token upstream gradient —
the ``reduction='none'`` case RL losses need):

* ``naive``       full logits -> log_softmax -> gather
* ``selective``   full logits, gather minus per-row logsumexp (TRL's selective_log_softmax)
* ``torch_lce``   ``torch.nn.functional.linear_cross_entropy`` (reference path), if present
* ``torch_lce_chunked``  the same with ``options=LinearCrossEntropyOptions()`` (chunked), if present
* ``liger``       Liger-Kernel's fused linear cross-entropy, if installed (CUDA only)
* ``ours``        ``agent_lightning.ops.token_logprobs`` (Triton on CUDA, chunked torch on CPU)
* ``ours_loss``   ``agent_lightning.ops.token_logprob_loss`` with the same per-token loss
                  (``sum(logp * upstream)``) given up front: the gradient is taken in the
                  forward sweep, three matmuls (what the trainer's policy losses use on CPU)
* ``mm``          one plain ``torch.mm`` of the logits' shape, for scale: a linear layer's
                  forward + backward is three of these ("mm-equiv" = 3 * t_mm / t)
* ``mm3``         those three matmuls themselves (logits, grad of hidden, grad of weight):
                  the floor of an exact forward + backward. ``ours`` does four (it recomputes the
                  logits in the backward pass instead of storing them), so ~1.33x is its
                  floor; ``ours_loss`` does these three

On CPU every method runs in a fresh process; its peak extra memory is the growth of the
process' resident high-water mark over its first call (see ``_common.run_isolated``). On
CUDA it is ``max_memory_allocated`` above the memory allocated before the call.

    python benchmarks/bench_logprobs.py --device cpu --json results/logprobs_cpu.json
    python benchmarks/bench_logprobs.py --device cuda --json results/logprobs_cuda.json
    python benchmarks/bench_logprobs.py --quick
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (  # noqa: E402
    base_parser,
    cpu_peak_extra_first_call,
    cuda_peak_extra,
    fmt_mib,
    fmt_ms,
    median,
    print_table,
    run_isolated,
    time_fn,
    time_fn_cpu,
    write_json,
)

METHODS = ("naive", "selective", "torch_lce", "torch_lce_chunked", "liger", "ours", "ours_loss", "mm", "mm3")
CPU_SHAPES = [(4096, 576, 49152, "float32"), (2048, 896, 151936, "float32")]
CUDA_SHAPES = CPU_SHAPES + [(8192, 2048, 128256, "bfloat16"), (16384, 4096, 151936, "bfloat16")]
QUICK_SHAPES = [(512, 128, 8192, "float32")]


def availability(method: str, device: str) -> str | None:
    """``None`` when ``method`` can run here, else why not."""
    import torch

    if method.startswith("torch_lce") and not hasattr(torch.nn.functional, "linear_cross_entropy"):
        return "torch.nn.functional.linear_cross_entropy not in this torch"
    if method == "torch_lce_chunked" and not hasattr(torch.nn, "LinearCrossEntropyOptions"):
        return "no LinearCrossEntropyOptions in this torch"
    if method == "liger":
        if device != "cuda":
            return "Liger-Kernel runs on CUDA only"
        if importlib.util.find_spec("liger_kernel") is None:
            return "liger-kernel not installed"
    return None


def make_case(n: int, h: int, v: int, dtype_name: str, device: str, seed: int = 0):
    import torch

    dtype = getattr(torch, dtype_name)
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen).to(device=device, dtype=dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=gen) / h**0.5).to(device=device, dtype=dtype).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=gen).to(device)
    upstream = torch.randn(n, generator=gen).to(device)
    return hidden, weight, targets, upstream


def method_fn(method: str, hidden, weight, targets, upstream):
    """A callable doing one forward + backward of ``method`` (grads reset each call)."""
    import torch
    import torch.nn.functional as F

    def reset():
        hidden.grad = None
        weight.grad = None

    if method == "naive":

        def run():
            reset()
            logp = torch.log_softmax((hidden @ weight.T).float(), dim=-1).gather(1, targets[:, None]).squeeze(1)
            (logp * upstream).sum().backward()

    elif method == "selective":

        def run():
            reset()
            logits = (hidden @ weight.T).float()
            logp = logits.gather(1, targets[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)
            (logp * upstream).sum().backward()

    elif method in ("torch_lce", "torch_lce_chunked"):
        options = torch.nn.LinearCrossEntropyOptions() if method == "torch_lce_chunked" else None

        def run():
            reset()
            nll = F.linear_cross_entropy(hidden, weight, targets, reduction="none", options=options)
            (-nll.float() * upstream).sum().backward()

    elif method == "liger":
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        loss_fn = LigerFusedLinearCrossEntropyLoss(reduction="none")

        def run():
            reset()
            nll = loss_fn(weight, hidden, targets)
            (-nll.float() * upstream).sum().backward()

    elif method == "ours":
        from agent_lightning.ops import token_logprobs

        def run():
            reset()
            logp = token_logprobs(hidden, weight, targets)
            (logp * upstream).sum().backward()

    elif method == "ours_loss":
        from agent_lightning.ops import token_logprob_loss

        def run():
            reset()
            token_logprob_loss(hidden, weight, targets, lambda logp, _: (logp * upstream).sum()).loss.backward()

    elif method == "mm":
        out = torch.empty(hidden.shape[0], weight.shape[0], dtype=hidden.dtype, device=hidden.device)

        def run():
            with torch.no_grad():
                torch.mm(hidden, weight.T, out=out)

    elif method == "mm3":
        out = torch.empty(hidden.shape[0], weight.shape[0], dtype=hidden.dtype, device=hidden.device)
        grad_out = torch.randn_like(out)
        grad_h, grad_w = torch.empty_like(hidden), torch.empty_like(weight)

        def run():
            with torch.no_grad():
                torch.mm(hidden, weight.T, out=out)
                torch.mm(grad_out, weight, out=grad_h)
                torch.mm(grad_out.T, hidden, out=grad_w)

    else:
        raise ValueError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}")
    return run


def measure(method: str, shape: tuple, device: str, repeats: int) -> dict:
    """Peak extra memory of the first call, then the median of ``repeats`` timed calls."""
    n, h, v, dtype_name = shape
    case = make_case(n, h, v, dtype_name, device)
    run = method_fn(method, *case)
    result = {"method": method, "shape": list(shape)}
    if device == "cuda":
        result["peak_extra_bytes"] = cuda_peak_extra(run)
        times = time_fn(run, device, repeats, warmup=0)
    else:
        result["peak_extra_bytes"] = cpu_peak_extra_first_call(run)
        times, cpu_times = time_fn_cpu(run, repeats, warmup=0)
        result.update(cpu_times_s=cpu_times, median_cpu_s=median(cpu_times))
    result.update(times_s=times, median_s=median(times))
    return result


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    parser.add_argument("--shapes", default=None, help="N,H,V,dtype;... (default: the issue's shapes for the device)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one method, print JSON
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    if args.worker:  # child process: one method, one shape, print JSON
        n, h, v, dtype_name = args.shapes.split(",")
        result = measure(args.worker, (int(n), int(h), int(v), dtype_name), args.device, args.repeats or 3)
        print(json.dumps(result))
        return

    if args.shapes:
        shapes = [tuple(int(x) if i < 3 else x for i, x in enumerate(s.split(","))) for s in args.shapes.split(";")]
    else:
        shapes = QUICK_SHAPES if args.quick else (CUDA_SHAPES if args.device == "cuda" else CPU_SHAPES)
    repeats = args.repeats or (1 if args.quick else 3)
    methods = [m for m in args.methods.split(",") if m]

    results, rows = [], []
    for shape in shapes:
        by_method = {}
        for method in methods:
            why = availability(method, args.device)
            if why is not None:
                by_method[method] = {"method": method, "shape": list(shape), "skipped": why}
            elif args.device == "cpu":
                worker_args = ["--worker", method, "--shapes", ",".join(map(str, shape)), "--device", "cpu"]
                worker_args += ["--repeats", str(repeats)] + (["--threads", str(args.threads)] if args.threads else [])
                res = run_isolated(os.path.abspath(__file__), worker_args)
                by_method[method] = {"method": method, "shape": list(shape), **res}
            else:
                try:
                    by_method[method] = measure(method, shape, args.device, repeats)
                except Exception as exc:  # noqa: BLE001 - a failing baseline is reported, not fatal
                    by_method[method] = {"method": method, "shape": list(shape), "error": f"{type(exc).__name__}: {exc}"}
            print(f"  {shape} {method}: {json.dumps({k: v for k, v in by_method[method].items() if k != 'shape'})}",
                  file=sys.stderr, flush=True)
        naive = by_method.get("naive", {})
        mm = by_method.get("mm", {})
        for method in methods:
            res = by_method[method]
            results.append(res)
            if "median_s" not in res:
                rows.append([_shape_str(shape), method, res.get("skipped") or res.get("error", "?")] + [""] * 6)
                continue
            t, mem = res["median_s"], res["peak_extra_bytes"]
            cpu_t = res.get("median_cpu_s")
            rows.append([
                _shape_str(shape),
                method,
                fmt_ms(t),
                fmt_ms(cpu_t) if cpu_t is not None else "-",
                fmt_mib(mem),
                f"{t / naive['median_s']:.2f}x" if "median_s" in naive else "-",
                f"{cpu_t / naive['median_cpu_s']:.2f}x" if cpu_t and naive.get("median_cpu_s") else "-",
                f"{mem / naive['peak_extra_bytes']:.3f}" if naive.get("peak_extra_bytes") else "-",
                f"{100 * 3 * mm['median_s'] / t:.0f}%" if "median_s" in mm and method != "mm" else "-",
            ])
    import torch

    threads = args.threads or torch.get_num_threads()
    print_table(
        f"token log-probs, forward + backward, device={args.device}, median of {repeats}"
        + (f", torch threads={threads} (cpu ms = process CPU time, all threads)" if args.device == "cpu" else ""),
        ["N,H,V,dtype", "method", "wall ms", "cpu ms", "peak extra MiB", "wall/naive", "cpu/naive", "mem/naive",
         "mm-equiv"],
        rows,
    )
    write_json(args.json, "bench_logprobs", args.device, results)


def _shape_str(shape) -> str:
    return ",".join(map(str, shape))


if __name__ == "__main__":
    main()
