"""Tile sweep of the Triton token log-prob kernel on a GPU: forward + backward time per
configuration against the naive torch path, with each configuration's largest gradient
error, so that the defaults in ``kernels/token_logprobs.py`` come from measurements.

A configuration is a set of ``blocks`` overrides (``BLOCK_N/V/H``, ``num_warps``,
``num_stages``, ``CUBLAS_DW``, ``ACC_M/K/N``; see ``triton_token_logprobs``). Results are
printed per shape as they finish (a sweep cut short by a time limit keeps what it printed).

    python benchmarks/sweep_logprob_tiles.py --json results/tiles_h200.json
    python benchmarks/sweep_logprob_tiles.py --shapes "4096,576,49152,float32" --repeats 3
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import base_parser, fmt_ms, median, print_table, time_fn, write_json  # noqa: E402

SHAPES = [(4096, 576, 49152, "float32"), (2048, 896, 151936, "float32"),
          (8192, 2048, 128256, "bfloat16"), (16384, 4096, 151936, "bfloat16")]
# name -> blocks overrides; "default" is whatever _blocks() picks.
CONFIGS = {
    "default": {},
    "pre_sm90": {"BLOCK_N": 64, "BLOCK_V": 128, "BLOCK_H": 64, "num_warps": None, "num_stages": None,
                 "ACC_M": 64, "ACC_K": 32, "ACC_N": 64},
    "cublas_dw": {"CUBLAS_DW": True},
    "n128_v128_w8": {"BLOCK_N": 128, "BLOCK_V": 128, "num_warps": 8, "num_stages": 3, "CUBLAS_DW": True},
    "n64_v256_w8": {"BLOCK_N": 64, "BLOCK_V": 256, "num_warps": 8, "num_stages": 3, "CUBLAS_DW": True},
    "n128_v256_w8": {"BLOCK_N": 128, "BLOCK_V": 256, "num_warps": 8, "num_stages": 3, "CUBLAS_DW": True},
    "n128_v64_w4": {"BLOCK_N": 128, "BLOCK_V": 64, "num_warps": 4, "num_stages": 3, "CUBLAS_DW": True},
    "n64_v128_h32_s4": {"BLOCK_H": 32, "num_warps": 4, "num_stages": 4, "CUBLAS_DW": True},
    "acc128": {"ACC_M": 128, "ACC_K": 32, "ACC_N": 128, "CUBLAS_DW": True},
}


def _case(n: int, h: int, v: int, dtype_name: str):
    import torch

    g = torch.Generator(device="cuda").manual_seed(0)
    dtype = getattr(torch, dtype_name)
    hidden = (torch.randn(n, h, device="cuda", generator=g) * 0.5).to(dtype).requires_grad_()
    weight = (torch.randn(v, h, device="cuda", generator=g) * h ** -0.5).to(dtype).requires_grad_()
    targets = torch.randint(0, v, (n,), device="cuda", generator=g)
    upstream = torch.randn(n, device="cuda", generator=g)
    return hidden, weight, targets, upstream


def _naive(hidden, weight, targets, upstream):
    import torch

    hidden.grad = weight.grad = None
    logp = torch.log_softmax((hidden @ weight.T).float(), dim=-1).gather(1, targets[:, None]).squeeze(1)
    (logp * upstream).sum().backward()
    return logp.detach(), hidden.grad.float(), weight.grad.float()


def _ours(hidden, weight, targets, upstream, blocks):
    from agent_lightning.kernels.token_logprobs import triton_token_logprobs

    hidden.grad = weight.grad = None
    logp, _ = triton_token_logprobs(hidden, weight, targets, None, 1.0, False, blocks)
    (logp * upstream).sum().backward()
    return logp.detach(), hidden.grad.float(), weight.grad.float()


def _rel_err(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


def main() -> None:
    import torch

    parser = base_parser(__doc__.splitlines()[0])
    parser.set_defaults(device="cuda")
    parser.add_argument("--shapes", default=None, help="N,H,V,dtype;... (default: the benchmark's CUDA shapes)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of " + ",".join(CONFIGS))
    args = parser.parse_args()
    args.repeats = args.repeats or 5
    if not torch.cuda.is_available():
        parser.error("needs a CUDA device (Triton's interpreter on CPU says nothing about tile speed)")
    shapes = SHAPES if not args.shapes else [
        (int(n), int(h), int(v), d) for n, h, v, d in (s.split(",") for s in args.shapes.split(";"))]
    results = []
    for shape in shapes:
        case = _case(*shape)
        ref = _naive(*case)
        naive_s = median(time_fn(lambda: _naive(*case), "cuda", args.repeats))
        rows = [["naive", fmt_ms(naive_s), "1.00", "-"]]
        for name in args.configs.split(","):
            blocks = CONFIGS[name]
            try:
                out = _ours(*case, blocks)
                err = max(_rel_err(a, b) for a, b in zip(out, ref))
                secs = median(time_fn(lambda: _ours(*case, blocks), "cuda", args.repeats))
            except Exception as exc:  # a tile too big for the shared memory, say
                rows.append([name, "failed", "-", f"{type(exc).__name__}: {str(exc)[:60]}"])
                results.append({"shape": shape, "config": name, "error": str(exc)[:200]})
                continue
            rows.append([name, fmt_ms(secs), f"{secs / naive_s:.2f}", f"{err:.1e}"])
            results.append({"shape": shape, "config": name, "blocks": blocks, "ms": secs * 1e3,
                            "naive_ms": naive_s * 1e3, "max_rel_err": err})
        print_table(f"N,H,V,dtype = {','.join(map(str, shape))}", ["config", "fwd+bwd", "x naive",
                                                                     "max rel err vs naive"], rows)
        case = ref = None  # free this shape's tensors before the next one
        torch.cuda.empty_cache()
    write_json(args.json, "sweep_logprob_tiles", "cuda", results)


if __name__ == "__main__":
    main()
