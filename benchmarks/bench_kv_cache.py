"""KV cache of ``backend.generate``: transformers' ``DynamicCache`` (grown with ``torch.cat`` at
every decoded token) vs ``backend.kv_cache: static`` (``StaticCache`` buffers written in place
and reused across calls, ``agent_lightning/backends/transformers/kv_cache.py``).

Same weights, prompts, rows, tokens and counter-based noise on both sides (the two backends
are loaded from the same config and seed); generation runs to ``--new-tokens`` (stop tokens
kept out). Prompts are chat messages whose user text is ``--prompt-tokens`` long (roughly),
different per row after a common chat-template header, as in an agent's batch. The two
alternate, repeat by repeat, after an untimed warm-up each; medians of wall time per
``generate`` call, and whether the sampled tokens were identical.

    python benchmarks/bench_kv_cache.py                               # smollm2, prompts of 40, 600, 1500 tokens
    python benchmarks/bench_kv_cache.py --model tiny --prompt-tokens 20,200 --rows 128 --new-tokens 8
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import SHARED_MACHINE_NOTE, base_parser, median, print_table, write_json  # noqa: E402
from bench_sampling import WORKLOADS, load_backend  # noqa: E402

MODELS = {name: workload[0] for name, workload in WORKLOADS.items()}  # the sampling bench's model configs
WORDS = "the keeper climbs the stairs of the old lighthouse every night and writes what the sea did".split()


def prompts_of(backend: Any, rows: int, length: int) -> list[list[int]]:
    """``rows`` encoded chat prompts whose user text is about ``length`` tokens, each different."""
    out = []
    for row in range(rows):
        words = [WORDS[(row + i) % len(WORDS)] for i in range(length)]
        ids = backend.encode_prompt([{"role": "user", "content": f"{row} " + " ".join(words)}])
        out.append(list(ids))
    return out


def one_call(backend: Any, prompts: list, new_tokens: int, seed: int) -> tuple[float, list]:
    from agent_lightning.types import NoiseKeys

    keys = NoiseKeys(tuple(seed * 1000 + i for i in range(len(prompts))))
    started = time.perf_counter()
    out = backend.generate(prompts, temperature=1.0, max_new_tokens=new_tokens, generator=keys)
    return time.perf_counter() - started, [g.token_ids for g in out]


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="smollm2")
    parser.add_argument("--prompt-tokens", default="40,600,1500", help="comma-separated user-text lengths")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=48)
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 5)
    os.environ.setdefault("TQDM_DISABLE", "1")  # the GGUF loader's progress bar

    import torch

    backends = {kv: load_backend(MODELS[args.model], args.device, args.threads, kv_cache=kv)
                for kv in ("dynamic", "static")}
    load_before = os.getloadavg()
    rows, results = [], []
    for length in (int(x) for x in args.prompt_tokens.split(",")):
        prompts = prompts_of(backends["dynamic"], args.rows, length)
        times: dict[str, list[float]] = {kv: [] for kv in backends}
        samples: dict[str, list] = {}
        for kv, backend in backends.items():  # warm-up, untimed (allocates the static buffers)
            one_call(backend, prompts, args.new_tokens, seed=0)
        for r in range(repeats):
            for kv, backend in backends.items():
                seconds, samples[kv] = one_call(backend, prompts, args.new_tokens, seed=r + 1)
                times[kv].append(seconds)
        d, s = median(times["dynamic"]), median(times["static"])
        width = max(len(p) for p in prompts)
        rows.append([f"{width}", f"{args.rows} x {args.new_tokens}", f"{d * 1e3:.0f}", f"{s * 1e3:.0f}",
                     f"{d / s:.2f}x", str(samples["dynamic"] == samples["static"])])
        results.append({"prompt_tokens": width, "rows": args.rows, "new_tokens": args.new_tokens,
                        "dynamic_s": times["dynamic"], "static_s": times["static"], "speedup": d / s})
    load_after = os.getloadavg()
    print_table(f"{args.model} backend.generate, counter noise, medians of {repeats} alternating repeats, "
                f"torch threads {torch.get_num_threads()}",
                ["prompt tokens", "rows x new", "dynamic ms", "static ms", "static speed-up", "same samples"], rows)
    print("load average (1/5/15 min): before {:.2f} {:.2f} {:.2f}, after {:.2f} {:.2f} {:.2f} on {} CPUs; {}".format(
        *load_before, *load_after, os.cpu_count(), SHARED_MACHINE_NOTE))
    write_json(args.json, "kv_cache", args.device, results)


if __name__ == "__main__":
    main()
