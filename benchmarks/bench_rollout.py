"""Rollout throughput: executors on the sandboxed ``code`` environment, and generation
backends on a GPU.

CPU part — episodes per second of the ``code`` environment (every attempt runs hidden
tests in the sandbox) with a scripted policy, so that it measures the environment and the
executor, not a model: the policy first replies with a wrong function (tests fail, the
environment answers with their output), then with the problem's reference solution
(tests pass): two sandbox runs per episode. Executors:

* ``inprocess, 1 env thread``   — every step one after the other;
* ``inprocess, 8 env threads``  — the trainer's default (``rollout.play``'s thread pool);
* ``ray, N workers``            — ``trainer.executor.name: ray`` with N one-CPU actors, one
  environment step at a time per worker (``env_threads: 1``), on a local cluster of
  ``--ray-cpus`` CPUs (default: the machine's).

GPU part (``--device cuda``) — tokens per second of batched sampling at temperature 1
through the transformers backend vs vLLM (the ``agent-lightning-vllm`` plugin's engine)
on the same random-init model saved to a temporary directory; skipped with a line saying
why when there is no CUDA device or no vllm.

    python benchmarks/bench_rollout.py --json results/rollout_cpu.json
    python benchmarks/bench_rollout.py --device cuda --json results/rollout_gpu.json
"""

from __future__ import annotations

import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import SHARED_MACHINE_NOTE, base_parser, median, print_table, write_json  # noqa: E402

_ENTRY = re.compile(r"Write a Python function `([A-Za-z_][A-Za-z0-9_]*)`")


class ScriptedCodePolicy:
    """A policy without a model: bytes as tokens; a wrong function first, then the reference.

    Implements what ``rollout.play`` calls (``encode_prompt``, ``encode_observation``,
    ``decode``, ``generate``); it has no weights, so Ray workers receive none.
    """

    version = 0

    def __init__(self) -> None:
        from agent_lightning.envs.code import problems

        self.solutions = {p["entry_point"]: p["reference"] for p in problems()}

    @staticmethod
    def _encode(text: str) -> list[int]:
        return list(text.encode())

    def encode_prompt(self, messages) -> list[int]:
        return self._encode("".join(m["content"] for m in messages))

    def encode_observation(self, messages, *, after_stop: bool) -> list[int]:
        return self._encode("".join(m["content"] for m in messages))

    def decode(self, token_ids) -> str:
        return bytes(token_ids).decode()

    def generate(self, prompts, *, temperature, top_p=1.0, max_new_tokens, generator=None):
        from agent_lightning.types import Generation

        out = []
        for prompt in prompts:
            text = bytes(prompt).decode()
            name = _ENTRY.search(text).group(1)
            retry = "tests passed." in text  # the environment's feedback is in the context
            body = self.solutions[name] if retry else f"def {name}(*args, **kwargs):\n    return None\n"
            ids = self._encode(f"```python\n{body}```")
            out.append(Generation(token_ids=tuple(ids), logprobs=(0.0,) * len(ids), finish_reason="stop"))
        return out


def _jobs(rounds_of: int):
    from agent_lightning.envs.code import CodeEnv

    tasks = CodeEnv().tasks("train")
    return [(f"{tasks[i % len(tasks)].id}/{i}", tasks[i % len(tasks)], i) for i in range(rounds_of)]


def _measure(executor, jobs, repeats: int) -> dict:
    executor.play(jobs[: max(2, len(jobs) // 4)], temperature=1.0, seed="warmup")  # warm caches and workers
    rates, solved = [], []
    for r in range(repeats):
        started = time.perf_counter()
        trajs = executor.play(jobs, temperature=1.0, seed=f"bench/{r}")
        rates.append(len(jobs) / (time.perf_counter() - started))
        solved.append(sum(t.success for t in trajs) / len(trajs))
        failures = [t.failure for t in trajs if t.failure]
        if failures:
            raise RuntimeError(f"{len(failures)} episodes failed, e.g. {failures[0]}")
    return {"episodes_per_s": median(rates), "runs": rates, "success_rate": min(solved)}


def cpu_benchmark(args) -> list[dict]:
    import concurrent.futures as futures

    from agent_lightning.config import SamplingConfig
    from agent_lightning.envs.code import CodeEnv
    from agent_lightning.loop.rollout import EnvPool
    from agent_lightning.scaling.executors.inprocess import InProcessExecutor

    sampling = SamplingConfig(max_new_tokens=4096, max_turns=3, max_context_tokens=65536)
    jobs = _jobs(args.episodes)
    results = []
    for threads in (1, 8):
        with futures.ThreadPoolExecutor(threads) as pool:
            executor = InProcessExecutor(backend=ScriptedCodePolicy(), envs=EnvPool(CodeEnv), threads=pool,
                                         sampling=sampling, step_timeout_s=60.0)
            results.append({"executor": f"inprocess, {threads} env thread{'s' if threads > 1 else ''}",
                            **_measure(executor, jobs, args.repeats)})
            executor.envs.close()
        print(f"  {results[-1]['executor']}: {results[-1]['episodes_per_s']:.2f} episodes/s", flush=True)
    try:
        import ray
    except ImportError:
        print("ray: skipped (not installed; pip install 'agent-lightning[ray]')")
        return results
    from agent_lightning.scaling.executors.ray_executor import RayExecutor, RayExecutorConfig

    ray.init(num_cpus=args.ray_cpus or os.cpu_count(), include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    try:
        for workers in args.ray_workers:
            config = RayExecutorConfig(workers=workers, generate_on="workers", env_threads=1,
                                       chunks_per_worker=args.chunks_per_worker)
            started = time.perf_counter()
            executor = RayExecutor(config, env_factory=CodeEnv, backend=ScriptedCodePolicy(),
                                   backend_factory=ScriptedCodePolicy, sampling=sampling, step_timeout_s=60.0)
            startup = time.perf_counter() - started
            try:
                results.append({"executor": f"ray, {workers} worker{'s' if workers > 1 else ''}",
                                **_measure(executor, jobs, args.repeats), "startup_s": startup})
            finally:
                executor.close()
            print(f"  {results[-1]['executor']}: {results[-1]['episodes_per_s']:.2f} episodes/s", flush=True)
    finally:
        ray.shutdown()
    return results


# ----------------------------------------------------------------------------- GPU


def _save_tiny(args, folder: str) -> None:
    from agent_lightning.backends.transformers.tiny import build_preset

    model, tokenizer = build_preset("tiny", {"architecture": "llama", "hidden_size": args.gpu_hidden,
                                             "num_layers": args.gpu_layers, "num_heads": args.gpu_heads}, 0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def gpu_benchmark(args) -> list[dict]:
    import tempfile

    import torch

    if not torch.cuda.is_available():
        print("gpu: skipped (no CUDA device)")
        return []
    from agent_lightning.backends.transformers.backend import TransformersBackend
    from agent_lightning.config import BackendConfig, ModelConfig

    results = []
    with tempfile.TemporaryDirectory() as folder:
        model_dir = args.model or folder
        if not args.model:
            _save_tiny(args, folder)
        backend = TransformersBackend(ModelConfig(name_or_path=model_dir, dtype="bfloat16"),
                                      BackendConfig(device="cuda"), seed=0)
        prompt = backend.encode_prompt([{"role": "user", "content": "guess my number between 1 and 6 ."}])
        prompts = [prompt] * args.gpu_batch

        def tf_run():
            gens = backend.generate(prompts, temperature=1.0, max_new_tokens=args.gpu_new_tokens,
                                    generator=torch.Generator().manual_seed(0))
            return sum(len(g.token_ids) for g in gens)

        tf_run()
        rates = []
        for _ in range(args.repeats):
            torch.cuda.synchronize()
            started = time.perf_counter()
            tokens = tf_run()
            torch.cuda.synchronize()
            rates.append(tokens / (time.perf_counter() - started))
        results.append({"backend": "transformers", "tokens_per_s": median(rates), "runs": rates})
        print(f"  transformers: {median(rates):.0f} tokens/s", flush=True)
        backend = None  # free the transformers model before vLLM takes its share
        torch.cuda.empty_cache()
        try:
            import vllm  # noqa: F401
        except ImportError:
            print("vllm: skipped (not installed; pip install ./plugins/agent-lightning-vllm on a CUDA machine)")
            return results
        from agent_lightning_vllm.engine import VLLMEngine, VLLMSettings

        engine = VLLMEngine(model_dir, VLLMSettings(gpu_memory_utilization=args.vllm_memory), lora=None, seed=0)
        engine.generate(prompts, temperature=1.0, top_p=1.0, max_new_tokens=args.gpu_new_tokens, seeds=None)
        rates = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            gens = engine.generate(prompts, temperature=1.0, top_p=1.0, max_new_tokens=args.gpu_new_tokens,
                                   seeds=None)
            rates.append(sum(len(g.token_ids) for g in gens) / (time.perf_counter() - started))
        results.append({"backend": "vllm", "tokens_per_s": median(rates), "runs": rates})
        print(f"  vllm: {median(rates):.0f} tokens/s", flush=True)
    return results


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=52, help="episodes per timed run (CPU part)")
    parser.add_argument("--ray-workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--ray-cpus", type=int, default=None, help="CPUs of the local Ray cluster")
    parser.add_argument("--chunks-per-worker", type=int, default=1)
    parser.add_argument("--model", default=None, help="GPU part: a local model directory instead of a tiny one")
    parser.add_argument("--gpu-hidden", type=int, default=1024)
    parser.add_argument("--gpu-layers", type=int, default=8)
    parser.add_argument("--gpu-heads", type=int, default=16)
    parser.add_argument("--gpu-batch", type=int, default=64)
    parser.add_argument("--gpu-new-tokens", type=int, default=128)
    parser.add_argument("--vllm-memory", type=float, default=0.5, help="vLLM gpu_memory_utilization")
    args = parser.parse_args()
    args.repeats = args.repeats or (1 if args.quick else 3)
    if args.quick:
        args.episodes = min(args.episodes, 12)
    load = os.getloadavg()
    print(f"{SHARED_MACHINE_NOTE}; load average at start {load[0]:.2f}, {os.cpu_count()} CPUs", flush=True)
    results: list[dict] = []
    if args.device == "cpu":
        rows = cpu_benchmark(args)
        base = next((r["episodes_per_s"] for r in rows if r["executor"] == "ray, 1 worker"), None)
        print_table(f"code environment, scripted policy, {args.episodes} episodes per run (2 sandbox runs each)",
                    ["executor", "episodes/s", "vs ray 1 worker", "runs (episodes/s)", "worker start-up s"],
                    [[r["executor"], f"{r['episodes_per_s']:.2f}",
                      f"{r['episodes_per_s'] / base:.2f}x" if base else "-",
                      " ".join(f"{x:.2f}" for x in r["runs"]), f"{r['startup_s']:.1f}" if "startup_s" in r else "-"]
                     for r in rows])
        results += [{"part": "cpu", **r} for r in rows]
    else:
        rows = gpu_benchmark(args)
        if rows:
            base = rows[0]["tokens_per_s"]
            print_table(f"sampling, batch {args.gpu_batch} x {args.gpu_new_tokens} new tokens, temperature 1",
                        ["backend", "tokens/s", "vs transformers"],
                        [[r["backend"], f"{r['tokens_per_s']:.0f}", f"{r['tokens_per_s'] / base:.2f}x"] for r in rows])
        results += [{"part": "gpu", **r} for r in rows]
    load_end = os.getloadavg()
    print(f"load average at end {load_end[0]:.2f}")
    write_json(args.json, "rollout", args.device, results, {"load_average": [load[0], load_end[0]]})


if __name__ == "__main__":
    main()
