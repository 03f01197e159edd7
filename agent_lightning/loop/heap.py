"""Keep Python's cyclic garbage collector off the objects that live for the whole run.

A training process holds millions of long-lived Python objects (torch, transformers and their
modules, the model's parameters and hooks, the tokenizer, the config). Each step allocates
many short-lived ones (episodes, turns, tensors' Python wrappers, metric dicts), so the
collector runs several young-generation passes a step and, now and then, a full pass over
everything: on the 2-core test machine about 200 ms for the quickstart-sized model's process,
which averaged 5.5 ms over a 77 ms step. :func:`frozen_long_lived` collects once, then moves
every surviving object into the collector's permanent generation (``gc.freeze``) for the
duration of the loop, so full passes only visit what the run itself created; on exit the
objects go back (``gc.unfreeze``) and can be collected again (a process that builds several
trainers does not keep the earlier ones).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def frozen_long_lived() -> Iterator[None]:
    """While open, the objects alive at entry are out of the cyclic collector's reach (see the
    module docstring). Does nothing when the collector is disabled or something else already
    froze objects (their owner decides when to unfreeze)."""
    import gc

    if not gc.isenabled() or gc.get_freeze_count():
        yield
        return
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
