"""``run_python``: run untrusted Python source in a sandbox and collect what it printed.

A run is a separate process tree in fresh PID, network, IPC, UTS and mount namespaces
(bubblewrap, else util-linux ``unshare``), running as an unprivileged user with
resource limits, a wall-clock timeout and an output cap. When the caller is root, every
run gets its own throw-away uid (never a real account), so ``RLIMIT_NPROC`` counts that
run alone and anything it leaves behind can be found and killed by uid.

Nothing comes back but stdout, stderr and the exit status: callers that need structured
results have the program print strict JSON and parse it outside (see
``agent_lightning.sandbox.function_tests``).
"""

from __future__ import annotations

import json
import math
import os
import pwd
import random
import selectors
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Mapping, Union

from agent_lightning.sandbox import backends as _b

UNSAFE_ENV = "ALIGHTNING_UNSAFE_SANDBOX"
BACKEND_ENV = "ALIGHTNING_SANDBOX"
_UID_RANGE = (1_500_000_000, 1_900_000_000)
_MAIN = "main.py"


class SandboxUnavailableError(RuntimeError):
    """No isolating backend works here and the caller did not opt into the unsafe mode."""


@dataclass(frozen=True)
class SandboxResult:
    """What a sandboxed run produced.

    Attributes:
        stdout: Decoded standard output (UTF-8, invalid bytes replaced), at most
            ``max_output_bytes`` bytes of it.
        stderr: Decoded standard error, same cap (shared with ``stdout``).
        exit_code: The program's exit status; ``128 + N`` when signal N ended it
            (including our own SIGKILL on timeout or output overflow); 125 when the
            sandbox itself could not be set up.
        timed_out: Whether the wall-clock timeout stopped it.
        stopped_reason: ``None`` for a normal exit, else one of ``"timeout"``,
            ``"output_limit"``, ``"cpu_limit"`` (SIGXCPU from ``RLIMIT_CPU``),
            ``"file_size_limit"`` (SIGXFSZ, or Python's EFBIG error on stderr),
            ``"memory_limit"`` (a ``MemoryError`` on stderr), ``"sandbox_error"`` or
            ``"signal:<NAME>"``. The last four are inferred from the exit status and
            the end of stderr after a failed exit, so a program can fake them; the first
            two are certain.
        backend: ``"bwrap"``, ``"unshare"`` or ``"unsafe"``.
        duration_s: Wall-clock seconds from start to the last process gone.
        uid: The throw-away uid the program ran as when the caller is root (no process
            of it is left when ``run_python`` returns), else ``None``.
    """

    stdout: str
    stderr: str
    exit_code: int
    timed_out: bool
    stopped_reason: str | None
    backend: str
    duration_s: float
    uid: int | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.stopped_reason is None


FileContent = Union[str, bytes]

_probe_lock = threading.Lock()
_probe_cache: dict[str, str | None] = {}


def available_backend(*, allow_unsafe: bool = False) -> str:
    """The backend ``run_python`` would use: the first of bwrap, unshare that works here.

    ``$ALIGHTNING_SANDBOX`` forces one. Falls back to ``"unsafe"`` only when
    ``allow_unsafe`` or ``$ALIGHTNING_UNSAFE_SANDBOX=1``; otherwise raises
    ``SandboxUnavailableError`` listing why each backend was rejected.
    """
    forced = os.environ.get(BACKEND_ENV, "").strip()
    if forced:
        if forced not in _b.BACKENDS:
            raise ValueError(f"${BACKEND_ENV}={forced!r}: expected one of {', '.join(_b.BACKENDS)}")
        return forced
    reasons = []
    for name in ("bwrap", "unshare"):
        failure = _probe(name)
        if failure is None:
            return name
        reasons.append(f"{name}: {failure}")
    if allow_unsafe or os.environ.get(UNSAFE_ENV) == "1":
        return "unsafe"
    raise SandboxUnavailableError(
        "no sandbox backend works on this machine (" + "; ".join(reasons) + "). Install "
        "bubblewrap (Debian/Ubuntu: apt-get install bubblewrap) or allow unprivileged user "
        f"namespaces; or accept running untrusted code without isolation: allow_unsafe=True "
        f"or {UNSAFE_ENV}=1.")


def _probe(name: str) -> str | None:
    """``None`` when backend ``name`` runs a trivial program correctly, else why not."""
    with _probe_lock:
        if name not in _probe_cache:
            tool = "bwrap" if name == "bwrap" else "unshare"
            if shutil.which(tool) is None:
                _probe_cache[name] = f"`{tool}` not found on PATH"
            else:
                try:
                    res = run_python("print(6 * 7)", timeout_s=10, memory_mb=256, backend=name)
                    ok = res.exit_code == 0 and res.stdout.strip() == "42"
                    _probe_cache[name] = None if ok else (
                        f"test run failed (exit {res.exit_code}): {res.stderr.strip()[-300:]}")
                except OSError as exc:
                    _probe_cache[name] = f"test run failed: {exc}"
        return _probe_cache[name]


def run_python(source: str, *, timeout_s: float, memory_mb: int,
               files: Mapping[str, FileContent] | None = None,
               max_output_bytes: int = 1 << 20, max_processes: int = 16,
               max_file_bytes: int = 16 << 20, work_dir_bytes: int = 64 << 20,
               backend: str | None = None, allow_unsafe: bool = False) -> SandboxResult:
    """Runs ``source`` as ``/sandbox/main.py`` in a fresh sandbox and waits for it.

    Args:
        source: Python source of the program, run with ``python -I -S -B -u``: isolated
            mode, no ``site`` (the standard library only, and a 5x faster start),
            unbuffered output.
        timeout_s: Wall-clock limit in seconds; the whole process tree is killed after it.
            The CPU-time limit is ``ceil(timeout_s) + 1`` seconds per process.
        memory_mb: Address-space limit per process, in MiB (Python itself needs ~30).
        files: Extra files, ``{relative path: text or bytes}``, placed read-only under
            ``/sandbox``.
        max_output_bytes: Cap on stdout + stderr together; exceeding it stops the run.
        max_processes: ``RLIMIT_NPROC`` (processes and threads of the run).
        max_file_bytes: ``RLIMIT_FSIZE``: largest file the program may write.
        work_dir_bytes: Size of the ``/sandbox`` and ``/tmp`` tmpfs, each.
        backend: ``"bwrap"``, ``"unshare"`` or ``"unsafe"``; default: see ``available_backend``.
        allow_unsafe: Accept running without isolation when no backend works (warns).
    """
    if not isinstance(source, str):
        raise TypeError(f"run_python: source must be str, got {type(source).__name__}")
    if not (timeout_s > 0 and math.isfinite(timeout_s)):
        raise ValueError(f"run_python: timeout_s must be a positive number, got {timeout_s!r}")
    if memory_mb < 32:
        raise ValueError(f"run_python: memory_mb must be >= 32 (Python needs it to start), got {memory_mb!r}")
    backend = backend or available_backend(allow_unsafe=allow_unsafe)
    if backend not in _b.BACKENDS:
        raise ValueError(f"run_python: unknown backend {backend!r}; expected one of {', '.join(_b.BACKENDS)}")
    if backend == "unsafe":
        warnings.warn(
            "agent_lightning.sandbox: running untrusted code WITHOUT ISOLATION (unsafe backend): "
            "it can read your files, use the network and outlive its timeout. Install bubblewrap.",
            RuntimeWarning, stacklevel=2)
    all_files = dict(files or {})
    if _MAIN in all_files:
        raise ValueError(f"run_python: files may not contain {_MAIN!r} (the program itself)")
    all_files[_MAIN] = source
    as_root = os.geteuid() == 0
    interp = _b.current_interpreter()
    if backend == "unsafe" and as_root:
        interp = _b.unsafe_interpreter() or interp
    uid = _pick_uid() if as_root else None
    run_dir = tempfile.mkdtemp(prefix="alightning-sbx-")
    try:
        paths = _prepare(run_dir, all_files, backend, uid)
        main_path = os.path.join(paths.work_dir, _MAIN) if backend == "unsafe" else f"{_b.WORK_DIR}/{_MAIN}"
        spec = {
            "uid": uid,
            "nested_userns": backend == "unshare" and not as_root,
            "reaper": backend != "unsafe",
            "cwd": paths.work_dir if backend == "unsafe" else _b.WORK_DIR,
            "argv": [interp.executable, "-I", "-S", "-B", "-u", main_path],
            "env": {"PATH": _b.SANDBOX_PATH, "HOME": paths.work_dir if backend == "unsafe" else _b.WORK_DIR,
                    "TMPDIR": _b.TMP_DIR, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"},
            "limits": {"cpu_s": math.ceil(timeout_s) + 1, "as_bytes": int(memory_mb) << 20,
                       "nproc": int(max_processes), "fsize_bytes": int(max_file_bytes), "nofile": 256},
        }
        if backend == "bwrap":
            cmd = _b.bwrap_command(paths, interp, as_root=as_root, tmp_bytes=work_dir_bytes,
                                   work_bytes=work_dir_bytes)
        elif backend == "unshare":
            cmd = _b.unshare_command(paths, interp, as_root=as_root)
            spec.update(_b.unshare_root_spec(paths, interp, tmp_bytes=work_dir_bytes,
                                             work_bytes=work_dir_bytes))
        else:
            cmd = _b.unsafe_command(paths, interp)
        with open(os.path.join(paths.ctl_dir, "spec.json"), "w") as fh:
            json.dump(spec, fh)
        os.chmod(os.path.join(paths.ctl_dir, "spec.json"), 0o644)
        return _execute(cmd, backend, uid, timeout_s, max_output_bytes,
                        cwd=paths.work_dir if backend == "unsafe" else "/")
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _pick_uid() -> int:
    while True:
        uid = random.SystemRandom().randrange(*_UID_RANGE)
        try:
            pwd.getpwuid(uid)
        except KeyError:
            if not _pids_of_uid(uid):
                return uid


def _prepare(run_dir: str, files: Mapping[str, FileContent], backend: str, uid: int | None) -> _b.RunPaths:
    names = []
    for name in files:
        if (not isinstance(name, str) or not name or "\0" in name or os.path.isabs(name)
                or os.path.normpath(name) != name or name.split("/")[0] == ".."):
            raise ValueError(f"run_python: bad file name {name!r} (want a normalised relative path like 'data/x.txt')")
        names.append(name)
    paths = _b.RunPaths(run_dir=run_dir, ctl_dir=os.path.join(run_dir, "ctl"),
                        files_dir=os.path.join(run_dir, "files"), root_dir=os.path.join(run_dir, "root"),
                        work_dir=os.path.join(run_dir, "work"), file_names=tuple(sorted(names)))
    os.chmod(run_dir, 0o711)
    for d in (paths.ctl_dir, paths.files_dir, paths.root_dir):
        os.mkdir(d, 0o755)
    shutil.copyfile(os.path.join(os.path.dirname(__file__), "launcher.py"),
                    os.path.join(paths.ctl_dir, "launcher.py"))
    os.chmod(os.path.join(paths.ctl_dir, "launcher.py"), 0o644)
    targets = [paths.files_dir]
    if backend == "unsafe":
        os.mkdir(paths.work_dir)
        os.chmod(paths.work_dir, 0o1777 if uid is not None else 0o755)
        targets.append(paths.work_dir)
    for target in targets:
        for name, content in files.items():
            dest = os.path.join(target, name)
            os.makedirs(os.path.dirname(dest), mode=0o755, exist_ok=True)
            with open(dest, "wb") as fh:
                fh.write(content.encode() if isinstance(content, str) else bytes(content))
            os.chmod(dest, 0o444)
    return paths


def _execute(cmd: list[str], backend: str, uid: int | None, timeout_s: float,
             max_output: int, cwd: str) -> SandboxResult:
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True, close_fds=True,
                            cwd=cwd, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"})
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    chunks = {out_fd: bytearray(), err_fd: bytearray()}
    sel = selectors.DefaultSelector()
    for f in (proc.stdout, proc.stderr):
        os.set_blocking(f.fileno(), False)
        sel.register(f.fileno(), selectors.EVENT_READ)
    reason = None
    total = 0
    exited_at = None
    try:
        while sel.get_map():
            now = time.monotonic()
            if now - start > timeout_s:
                reason = "timeout"
                break
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            # After the main process is gone, only drain what is already buffered: a
            # leftover process holding the pipe open must not stall the caller.
            if exited_at is not None and now - exited_at > 0.25:
                break
            for key, _ in sel.select(timeout=0.05):
                try:
                    data = os.read(key.fd, 65536)
                except BlockingIOError:
                    continue
                if not data:
                    sel.unregister(key.fd)
                    continue
                room = max_output - total
                chunks[key.fd] += data[:max(room, 0)]
                total += len(data)
                if total > max_output:
                    reason = "output_limit"
                    break
            if reason:
                break
    finally:
        sel.close()
        _kill_tree(proc, uid)
        proc.stdout.close()
        proc.stderr.close()
    code = proc.returncode
    if code < 0:
        code = 128 - code
    if reason is not None:  # we killed it; bwrap/unshare report that differently
        code = 128 + signal.SIGKILL
    duration = time.monotonic() - start
    out_b, err_b = chunks[out_fd], chunks[err_fd]
    stdout = out_b.decode("utf-8", "replace")
    stderr = err_b.decode("utf-8", "replace")
    if reason is None:
        reason = _infer_reason(code, stderr)
    return SandboxResult(stdout=stdout, stderr=stderr, exit_code=code, timed_out=reason == "timeout",
                         stopped_reason=reason, backend=backend, duration_s=duration, uid=uid)


def _infer_reason(code: int, stderr: str) -> str | None:
    if code == 0:
        return None
    if code == 125 and "alightning-sandbox: setup failed" in stderr:
        return "sandbox_error"
    if code > 128:
        sig = code - 128
        if sig == signal.SIGXCPU:
            return "cpu_limit"
        if sig == signal.SIGXFSZ:
            return "file_size_limit"
        try:
            return "signal:" + signal.Signals(sig).name
        except ValueError:
            return f"signal:{sig}"
    tail = stderr[-2000:]
    if "MemoryError" in tail:
        return "memory_limit"
    if "[Errno 27] File too large" in tail:  # Python ignores SIGXFSZ and sees EFBIG instead
        return "file_size_limit"
    return None


def _kill_tree(proc: subprocess.Popen, uid: int | None) -> None:
    """Ends the run leaving nothing behind, not even an unreaped zombie.

    The sandbox's PID 1 is a child of ``proc`` (bwrap or unshare). Killing it first makes
    the kernel kill its whole PID namespace, and ``proc``, still alive, reaps it and
    exits; killing ``proc`` first would orphan PID 1 to the host's init, which may be slow
    to reap. Then the process group, and, when we are root, every process of the run's
    throw-away uid (the unsafe backend has no PID namespace to rely on).
    """
    if proc.poll() is None:
        for child in _children(proc.pid):
            try:
                os.kill(child, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    if uid is None:
        return
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        pids = _pids_of_uid(uid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(x) for x in fh.read().split()]
    except OSError:
        return []


def _pids_of_uid(uid: int) -> list[int]:
    """Processes whose real uid is ``uid`` (zombies included, they still hold a pid)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status", "rb") as fh:
                for line in fh:
                    if line.startswith(b"Uid:"):
                        if int(line.split()[1]) == uid:
                            found.append(int(entry))
                        break
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return found
