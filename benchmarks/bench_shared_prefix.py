"""Prompt-prefix sharing in the transformers backend's ``generate``: held-out evaluation
episodes per second with the prompts' common prefix encoded once per batch vs every prompt
encoded whole, on a real config (default: the ``smollm2-tool-use`` preset, whose system
prompt and worked example make up about 290 of each prompt's ~310 tokens).

Both settings play the same episodes with the same seeds; the table also says whether
their actions were identical (they should be: the shared path is exact up to float
rounding, and evaluation is greedy).

    python benchmarks/bench_shared_prefix.py
    python benchmarks/bench_shared_prefix.py --config my.yaml --episodes 48 --repeats 2
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import base_parser, median, print_table, write_json  # noqa: E402


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--config", default="smollm2-tool-use", help="config file or preset")
    parser.add_argument("--episodes", type=int, default=24, help="held-out episodes per measurement")
    args = parser.parse_args()
    repeats = args.repeats or 2

    from agent_lightning.backends.transformers.backend import shared_prefix_length
    from agent_lightning.config import load_config
    from agent_lightning.loop.trainer import Trainer

    overrides = [f"backend.device={args.device}"] + ([f"backend.threads={args.threads}"] if args.threads else [])
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(load_config(args.config, overrides), Path(tmp) / "run")
        prompts = [trainer.backend.encode_prompt(t.prompt) for t in trainer.eval_tasks]
        shared = shared_prefix_length(prompts)
        seconds: dict[bool, list[float]] = {True: [], False: []}
        actions: dict[bool, tuple] = {}
        for _ in range(repeats):
            for share in (True, False):
                trainer.backend.share_prefix = share
                started = time.perf_counter()
                trajectories = trainer.play_evaluation(trainer.eval_tasks, args.episodes)
                seconds[share].append(time.perf_counter() - started)
                actions[share] = tuple(turn.action for t in trajectories for turn in t.turns)
    whole, once = median(seconds[False]), median(seconds[True])
    rows = [["whole prompts", f"{whole:.1f}", f"{args.episodes / whole:.2f}", "1.00"],
            ["shared prefix", f"{once:.1f}", f"{args.episodes / once:.2f}", f"{whole / once:.2f}"]]
    print_table(f"{args.config}: {args.episodes} greedy episodes, prompts {min(map(len, prompts))}-"
                f"{max(map(len, prompts))} tokens, {shared} shared; identical actions: {actions[True] == actions[False]}",
                ["generation", "seconds", "episodes/s", "speed-up"], rows)
    write_json(args.json, "shared_prefix", args.device,
               [{"share_prefix": s, "seconds": seconds[s]} for s in (False, True)],
               {"shared_tokens": shared, "identical_actions": actions[True] == actions[False]})


if __name__ == "__main__":
    main()
