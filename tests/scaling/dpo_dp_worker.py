"""Run under ``torchrun`` by ``test_data_parallel_dpo.py`` (not a test module itself).

    python -m torch.distributed.run --standalone --nproc-per-node 2 dpo_dp_worker.py CONFIG OUT

One uninterrupted online-DPO run in ``OUT/run``. Each rank writes its final trainable weights
to ``OUT/rank-<r>.safetensors`` and, to ``OUT/rank-<r>.json``, how many preference pairs its
DPO loss saw (:func:`count_pairs`), next to its rank and world size.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def count_pairs() -> list[int]:
    """Wrap ``DPO.loss`` to record the number of pairs of every micro-batch it computes;
    returns the (growing) list of those counts."""
    from agent_lightning.algorithms.dpo import DPO

    seen: list[int] = []
    loss = DPO.loss

    def counting(self, backend, pairs):
        seen.append(len(pairs))
        return loss(self, backend, pairs)

    DPO.loss = counting
    return seen


def main(config_path: str, out: str) -> None:
    from safetensors.torch import save_file

    from agent_lightning.config import load_config
    from agent_lightning.loop.trainer import Trainer
    from agent_lightning.scaling import distributed

    seen = count_pairs()
    trainer = Trainer(load_config(config_path), Path(out) / "run")
    trainer.run()
    rank = distributed.rank()
    save_file({k: v.clone() for k, v in trainer.backend.weights_state_dict().items()},
              str(Path(out) / f"rank-{rank}.safetensors"))
    context = distributed.context()
    info = {"rank": rank, "world_size": context.world_size, "backend": context.backend,
            "pairs_seen": sum(seen), "micro_batches": len(seen)}
    (Path(out) / f"rank-{rank}.json").write_text(json.dumps(info))
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
