"""Progress bars for long operations: model loading (GGUF dequantisation included),
rollouts, evaluation, checkpoint writes.

One rich ``Progress`` on stderr is shared by the whole process: an operation started
while another is shown adds a row under it and removes it when done, so nested work
(an evaluation's rollouts) never starts a second live display. Bars are drawn only when
stdout and stderr are both terminals and ``--quiet`` was not given; otherwise every call
here is a cheap no-op and pipes and log files never receive escape codes. When a live
display that is not ours is running (rich's ``Live`` swaps ``sys.stdout`` for a
``FileProxy``: the console tracker's training bar), bars stay off rather than fight it.

    with progress.task("writing checkpoint step-50"):          # spinner + elapsed time
        ...
    with progress.task("evaluating", total=4) as bar:          # a bar
        bar.update(advance=1, description="evaluating step-50")
    for turn in progress.track(range(3), "playing 60 episodes"):
        ...
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from typing import Any, Iterable, Iterator, TypeVar

T = TypeVar("T")

_lock = threading.RLock()
_state: dict[str, Any] = {"quiet": False, "progress": None, "open": 0}


def configure(*, quiet: bool) -> None:
    """Called once by the CLI: ``quiet`` turns every bar off.

    Also sets ``TQDM_DISABLE=1`` (unless already set) for this process, so that the tqdm
    bars of libraries (transformers' GGUF dequantisation and weight loading, Hub
    downloads) neither tear our display nor leak carriage returns into logs: model
    loading shows our own spinner instead.
    """
    _state["quiet"] = bool(quiet)
    os.environ.setdefault("TQDM_DISABLE", "1")


def _foreign_live() -> bool:
    try:
        from rich.file_proxy import FileProxy
    except ImportError:  # pragma: no cover - rich always has it
        return False
    return isinstance(sys.stdout, FileProxy) or isinstance(sys.stderr, FileProxy)


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def enabled() -> bool:
    """Whether bars are drawn: not quiet, both stdout and stderr terminals, no other live display."""
    if _state["quiet"] or _state["progress"] is not None:
        return not _state["quiet"]
    return _is_tty(sys.stdout) and _is_tty(sys.stderr) and not _foreign_live()


def model_label(model: Any) -> str:
    """What ``progress.task`` says while a model loads, from the ``model`` config section."""
    if getattr(model, "gguf_file", None):
        return f"loading model: dequantising {os.path.basename(model.gguf_file)}"
    name = getattr(model, "name_or_path", None) or f"preset {getattr(model, 'preset', None)}"
    return f"loading model {name}"


class Bar:
    """One row of the shared display (a no-op when bars are off)."""

    def __init__(self, task_id: Any = None):
        self._task_id = task_id

    def update(self, *, completed: float | None = None, advance: float | None = None,
               total: float | None = None, description: str | None = None) -> None:
        progress = _state["progress"]
        if self._task_id is None or progress is None:
            return
        kwargs: dict[str, Any] = {}
        if completed is not None:
            kwargs["completed"] = completed
        if advance is not None:
            kwargs["advance"] = advance
        if total is not None:
            kwargs["total"] = total
        if description is not None:
            kwargs["description"] = description
        progress.update(self._task_id, **kwargs)

    def close(self) -> None:
        """Remove the row; the display stops with its last row."""
        if self._task_id is None:
            return
        with _lock:
            progress = _state["progress"]
            task_id, self._task_id = self._task_id, None
            if progress is None:
                return
            progress.remove_task(task_id)
            _state["open"] -= 1
            if _state["open"] == 0:
                progress.stop()
                _state["progress"] = None


def _new_progress() -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, ProgressColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.text import Text

    class _Count(ProgressColumn):
        def render(self, task: Any) -> Text:
            return Text("" if task.total is None else f"{task.completed:g}/{task.total:g}")

    # No stdout/stderr redirection: what the program prints stays on its own stream.
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), _Count(), TimeElapsedColumn(),
                    console=Console(file=sys.stderr), transient=True, redirect_stdout=False, redirect_stderr=False)


def start(description: str, total: float | None = None) -> Bar:
    """Show a row (a spinner when ``total`` is None); call ``close()`` on the result."""
    with _lock:
        if not enabled():
            return Bar()
        if _state["progress"] is None:
            _state["progress"] = _new_progress()
            _state["progress"].start()
        _state["open"] += 1
        return Bar(_state["progress"].add_task(description, total=total))


@contextlib.contextmanager
def task(description: str, total: float | None = None) -> Iterator[Bar]:
    """``start`` as a context manager (the row goes away however the block ends)."""
    bar = start(description, total)
    try:
        yield bar
    finally:
        bar.close()


def track(iterable: Iterable[T], description: str, total: float | None = None) -> Iterator[T]:
    """Iterate with a bar advanced once per item; the bar goes when iteration stops
    (also on ``break``, when the generator is closed)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with task(description, total) as bar:
        for item in iterable:
            yield item
            bar.update(advance=1)
