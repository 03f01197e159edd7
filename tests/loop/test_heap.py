"""The training loop keeps the objects alive before it out of the cyclic collector, and gives them back."""

from __future__ import annotations

import gc

from agent_lightning.loop.heap import frozen_long_lived


class _Node:
    def __init__(self):
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_objects_alive_at_entry_are_frozen_while_open_and_collectable_after():
    assert gc.get_freeze_count() == 0
    garbage = _Node()
    held = _Node()
    del garbage
    with frozen_long_lived():
        frozen = gc.get_freeze_count()
        assert frozen > 0
        assert not any(isinstance(o, _Node) for o in gc.get_objects())  # frozen: not tracked by a generation
        fresh = _Node()
        assert any(o is fresh for o in gc.get_objects())  # created inside: collected as usual
    assert gc.get_freeze_count() == 0
    assert any(o is held for o in gc.get_objects())  # back in the collector's generations
    assert sum(isinstance(o, _Node) for o in gc.get_objects()) == 2  # the dropped cycle was collected first


def test_nothing_happens_when_disabled_or_already_frozen():
    gc.disable()
    try:
        with frozen_long_lived():
            assert gc.get_freeze_count() == 0
    finally:
        gc.enable()
    earlier = _Node()
    gc.freeze()  # someone else's freeze (refcounting may still free frozen objects: count nothing)
    try:
        later = _Node()
        with frozen_long_lived():
            assert any(o is later for o in gc.get_objects())  # nothing was frozen on entry...
        assert not any(o is earlier for o in gc.get_objects())  # ...nor unfrozen on exit
    finally:
        gc.unfreeze()


def test_a_training_run_freezes_during_its_steps_only(tiny_config, tmp_path, monkeypatch):
    from agent_lightning.loop.trainer import Trainer

    seen = []
    real = Trainer.train_step
    monkeypatch.setattr(Trainer, "train_step", lambda self: seen.append(gc.get_freeze_count()) or real(self))
    Trainer(tiny_config(), tmp_path / "run").run()
    assert len(seen) == 2 and all(count > 0 for count in seen)
    assert gc.get_freeze_count() == 0
