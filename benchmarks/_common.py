"""Timing, peak-memory and table helpers shared by the benchmark scripts.

* ``time_fn``: median wall time of a callable (CUDA-synchronised on GPU).
* ``cuda_peak_extra``: peak allocated CUDA memory above what was allocated before the call.
* ``run_isolated``: run one method in a fresh Python process and read back a JSON line —
  how CPU peak memory is measured honestly: torch keeps no CPU allocator statistics, so the
  worker reports ``ru_maxrss`` (the process' resident high-water mark) after one call minus
  the high-water mark just before it. A fresh process per method keeps one method's freed
  pages and allocator caches from hiding another's.
* ``print_table`` / ``write_json``: the side-by-side table and the JSON result file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

SHARED_MACHINE_NOTE = "timings on a machine whose cores may be shared with other jobs; medians reported"


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, one repeat: a smoke run")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per method (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return parser


def synchronize(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def time_fn(fn: Callable[[], Any], device: str, repeats: int, warmup: int = 1) -> list[float]:
    """Seconds per call for ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def cuda_peak_extra(fn: Callable[[], Any]) -> int:
    """Bytes of CUDA memory ``fn`` allocates at its peak beyond what was allocated before."""
    import torch

    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def maxrss_bytes() -> int:
    """The process' peak resident set size so far (Linux reports KiB, macOS bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset Linux's VmHWM to the current RSS (``echo 5 > /proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def cpu_peak_extra_first_call(fn: Callable[[], Any]) -> int:
    """Peak RSS growth during the first call of ``fn`` in this (fresh) process, in bytes.

    On Linux the peak (VmHWM) is reset to the current RSS right before the call, so memory
    freed earlier (e.g. temporaries of input creation) cannot hide the call's own peak.
    Elsewhere falls back to the growth of ``ru_maxrss``, which can under-count.
    """
    import gc

    gc.collect()
    if _reset_peak_rss():
        before = _proc_status_kib("VmRSS")
        fn()
        peak = _proc_status_kib("VmHWM")
        if before is not None and peak is not None:
            return (peak - before) * 1024
    before = maxrss_bytes()
    fn()
    return maxrss_bytes() - before


def time_fn_cpu(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> tuple[list[float], list[float]]:
    """``(wall seconds, process CPU seconds)`` per call. CPU time (all threads) is the
    steadier number on a machine shared with other jobs; wall time is what users feel."""
    for _ in range(warmup):
        fn()
    walls, cpus = [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return walls, cpus


def run_isolated(script: str, args: Sequence[str], timeout: float = 3600) -> dict:
    """Run ``python script *args`` and return the JSON object it prints on its last line."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run(
        [sys.executable, script, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"error": " | ".join(tail) or f"exit code {proc.returncode}"}
    return json.loads(lines[-1])


def fmt_ms(seconds: float | None) -> str:
    if seconds is None or seconds != seconds:
        return "-"
    ms = seconds * 1e3
    return f"{ms:.1f}" if ms >= 10 else f"{ms:.3g}"


def fmt_mib(num_bytes: int | float | None) -> str:
    if num_bytes is None:
        return "-"
    return f"{num_bytes / 2**20:.0f}"


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Print (and return) a plain-text table with right-aligned columns."""
    cells = [[str(c) for c in columns]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = [title, "  ".join(c.rjust(w) for c, w in zip(cells[0], widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells[1:]]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def environment(device: str) -> dict:
    import torch

    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "note": SHARED_MACHINE_NOTE,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def write_json(path: str | None, benchmark: str, device: str, results: list[dict], extra: dict | None = None) -> None:
    if not path:
        return
    payload = {"benchmark": benchmark, "environment": environment(device), "results": results, **(extra or {})}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(payload, fh, indent=2)
    print(f"wrote {path}")
