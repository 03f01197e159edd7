"""The ``try-agent`` and ``serve`` subcommands of ``alightning``.

    alightning try-agent [CONFIG|PRESET] [key=value ...] [--episodes N] [--split eval|train] [--json PATH]
    alightning serve RUN_DIR|CHECKPOINT|CONFIG|PRESET [key=value ...] [--port P] [--host H] [--api-key KEY]

``try-agent`` plays a few episodes of a config's agent against the base policy (no
training) and prints what the endpoint recorded, to check an agent's wiring before a long
run. ``serve`` serves a policy — the base model of a config, or a run's trained checkpoint
— over the same OpenAI-compatible API, until Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from pathlib import Path
from typing import Any

from agent_lightning.cli.args import rest_positional, source_and_overrides


def _config(source: str | None, overrides: list[str]) -> Any:
    from agent_lightning.config import ConfigError, load_config

    config = load_config(source, overrides)
    if config.agent is None:
        raise ConfigError(f"{source or 'the config'} has no agent section (try-agent plays agents; "
                          "'alightning try ENV' plays an environment yourself)")
    return config


def _try_agent(args: argparse.Namespace) -> int:
    import tempfile

    from agent_lightning.loop.trainer import Trainer

    source, overrides = source_and_overrides(args.config_and_overrides)
    config = _config(source, overrides)
    config = config.model_copy(update={"trackers": []})
    with tempfile.TemporaryDirectory(prefix="alightning-try-agent-") as scratch:
        trainer = Trainer(config, Path(scratch))
        try:
            tasks = trainer.eval_tasks if args.split == "eval" and trainer.eval_tasks else trainer.train_tasks
            jobs = [(f"try-{i}/{tasks[i % len(tasks)].id}", tasks[i % len(tasks)], i) for i in range(args.episodes)]
            trajectories = trainer._play(jobs, config.sampling.temperature, seed=f"{config.trainer.seed}/try")
            counts = trainer.rollout_executor.metrics()
        finally:
            trainer.rollout_executor.close()
            trainer.envs.close()
    records = [_record(trainer.backend, t) for t in trajectories]
    for record in records:
        _print_record(record)
    summary = ", ".join(f"{k.split('/')[-1]}={v:g}" for k, v in sorted(counts.items()))
    print(f"{len(trajectories)} trajectories from {args.episodes} episodes; {summary}")
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1))
        print(f"trajectories: {args.json}")
    return 0


def _record(backend: Any, traj: Any) -> dict[str, Any]:
    from agent_lightning.types import Backend, optional

    render = optional(backend, Backend, "render", backend.decode)
    return {"id": traj.id, "task": traj.task.id, "reward": traj.final_reward, "success": traj.success,
            "failure": traj.failure, "segment": traj.info.get("segment"), "segments": traj.info.get("segments"),
            "breaks": traj.info.get("breaks", []), "prompt": render(list(traj.prompt_token_ids)),
            "calls": [{"reply": t.action, "tokens": len(t.action_token_ids), "call_id": t.info.get("call_id"),
                       "call_reward": t.info.get("call_reward"), "then": render(list(t.observation_token_ids))}
                      for t in traj.turns]}


def _print_record(record: dict[str, Any]) -> None:
    status = (f"FAILED: {record['failure']}" if record["failure"]
              else f"reward {record['reward'] + 0.0:g}, success {record['success']}")
    print(f"── {record['id']} (segment {record['segment']} of {record['segments']}) {status}")
    print(f"   prompt: {record['prompt']!r}")
    for call in record["calls"]:
        print(f"   reply ({call['tokens']} tokens): {call['reply']!r}")
        if call["then"]:
            print(f"   then: {call['then']!r}")
    for item in record["breaks"] or []:
        print(f"   history rewritten at call {item['call']}: {item['reason']}")


def _serve(args: argparse.Namespace) -> int:
    from agent_lightning.config import ConfigError, apply_overrides, load_config, read_yaml, validate
    from agent_lightning.loop import checkpoint as ckpt
    from agent_lightning.plugins import create_component, get_plugin_manager
    from agent_lightning.serving.server import PolicyServer
    from agent_lightning.serving.service import PolicyService, SamplingDefaults

    source, overrides = source_and_overrides(args.target)
    folder = None
    path = Path(source) if source else None
    if path is not None and path.is_dir():
        if ckpt.STEP_DIR.match(path.name) and path.parent.name == "checkpoints":
            ckpt.verify_checkpoint(path)
            run_dir, folder = path.parent.parent, path
        else:
            run_dir = path
            found = ckpt.latest_checkpoint(run_dir) if (run_dir / "checkpoints").is_dir() else None
            folder = found[1] if found else None
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"{path}: not a run directory or checkpoint (no config.yaml in {run_dir})")
        config = validate(apply_overrides(read_yaml(str(run_dir / "config.yaml")), overrides))
    else:
        config = load_config(source, overrides)
    pm = get_plugin_manager()
    backend = create_component(pm, "backend", "backend", config.backend.name, config.model, config.backend,
                               seed=config.trainer.seed)
    if folder is not None:
        backend.load(str(folder))
    models = ("policy",)
    service = PolicyService(backend, SamplingDefaults.from_config(config.sampling), models=models, fixed_sampling=False,
                            api_key=args.api_key)
    server = PolicyServer(service, host=args.host, port=args.port, serving=True).start()
    what = f"checkpoint {folder}" if folder is not None else "the base model (no checkpoint)"
    print(f"serving {what} at {server.base_url()} (model '{models[0]}')")
    print(f"API key: {service.api_key}")
    print(f"try: OpenAI(base_url='{server.base_url()}', api_key='{service.api_key}')", flush=True)
    done = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: done.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not done.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.stop()
    print("stopped")
    return 0


def add_commands(sub: Any) -> None:
    """Add ``try-agent`` and ``serve`` to the CLI's subparsers."""
    quiet = argparse.ArgumentParser(add_help=False)
    quiet.add_argument("--quiet", "-q", action="store_true", default=argparse.SUPPRESS, help="no progress bars")
    tr = sub.add_parser("try-agent", parents=[quiet],
                        help="play a few episodes of a config's agent against the base policy and print the recorded calls")
    tr.add_argument("config_and_overrides", nargs="*", metavar="[CONFIG|PRESET] [key.path=value ...]")
    tr.add_argument("--episodes", type=int, default=2, help="episodes to play (default 2)")
    tr.add_argument("--split", default="eval", choices=("eval", "train"), help="which tasks (default: eval)")
    tr.add_argument("--json", metavar="PATH", help="also write the recorded trajectories here")
    tr.set_defaults(handler=_try_agent)
    rest_positional(tr, "config_and_overrides")

    sv = sub.add_parser("serve", parents=[quiet], help="serve a policy (a run's latest checkpoint, one checkpoint, "
                                                       "or a config's base model) over the OpenAI API")
    sv.add_argument("target", nargs="*", metavar="RUN_DIR|CHECKPOINT|CONFIG|PRESET [key.path=value ...]")
    sv.add_argument("--port", type=int, default=8000, help="port on --host (default 8000; 0: any free port)")
    sv.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1: this machine only)")
    sv.add_argument("--api-key", help="the bearer key clients must send (default: a new random one, printed)")
    sv.set_defaults(handler=_serve)
    rest_positional(sv, "target")
