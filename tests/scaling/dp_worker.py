"""Run under ``torchrun`` by ``test_data_parallel.py`` (not a test module itself).

    python -m torch.distributed.run --standalone --nproc-per-node 2 dp_worker.py CONFIG OUT STOP [STRATEGIES]

In one process group, for each strategy ``S`` (``ddp,fsdp`` by default): an uninterrupted run in
``OUT/S/full`` and a run stopped after step ``STOP`` in ``OUT/S/resumed``. The ``fsdp`` one
is resumed here by a fresh trainer; the test resumes the ``ddp`` one through the CLI in
fresh processes. Each rank writes its final trainable weights and what it observed into
``OUT/S/rank-<r>.*``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _save_weights(trainer, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.clone() for k, v in trainer.backend.weights_state_dict().items()}, str(path))


def main(config_path: str, out: str, stop: int, strategies: str = "ddp,fsdp") -> None:
    from agent_lightning.config import load_config
    from agent_lightning.loop.trainer import Trainer
    from agent_lightning.scaling import distributed

    for strategy in strategies.split(","):
        folder = Path(out) / strategy
        config = load_config(config_path, [f"trainer.distributed.strategy={strategy}"])
        full = Trainer(config, folder / "full")
        full.run()
        rank = distributed.rank()
        if strategy == "fsdp":  # shards -> whole tensors, as a checkpoint would
            from agent_lightning.scaling import fsdp

            with fsdp.full_state_for_save(full.backend):
                _save_weights(full, folder / f"rank-{rank}.safetensors")
        else:
            _save_weights(full, folder / f"rank-{rank}.safetensors")
        Trainer(config, folder / "resumed").run(until_step=stop)
        if strategy == "fsdp":
            Trainer(config, folder / "resumed").run(resume=True)
        context = distributed.context()
        info = {"rank": rank, "world_size": context.world_size, "backend": context.backend,
                "strategy": context.strategy, "trackers": [name for name, _ in full.trackers.named]}
        (folder / f"rank-{rank}.json").write_text(json.dumps(info))
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), *sys.argv[4:5])
