"""How a sandbox is entered: bubblewrap, ``unshare`` namespaces, or (opt-in) nothing.

Each backend turns a prepared run directory into a command line. The host side of a
run looks like::

    <run_dir>/            0711, owned by the caller
        ctl/              launcher.py + spec.json          -> /.alightning (read-only)
        files/            main.py + the caller's files     -> /sandbox/<name> (read-only)
        root/             empty mount point (unshare backend only)
        work/             the work directory (unsafe backend only)

Inside, ``/sandbox`` is a size-capped tmpfs (the working directory and ``$HOME``) and
``/tmp`` another; ``/usr`` and the interpreter's prefix are read-only; nothing else of
the host file system is visible, and there is no network (a fresh network namespace
holds only a loopback interface that is down).
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass

BACKENDS = ("bwrap", "unshare", "unsafe")
WORK_DIR = "/sandbox"
TMP_DIR = "/tmp"
CTL_DIR = "/.alightning"
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class Interpreter:
    """The Python that runs sandboxed code: the caller's own base interpreter.

    Attributes:
        executable: Resolved path of the binary.
        prefixes: Directories outside ``/usr`` that must be visible (read-only) for it
            to start: its installation prefix(es).
    """

    executable: str
    prefixes: tuple[str, ...]


def current_interpreter() -> Interpreter:
    exe = os.path.realpath(sys.executable)
    prefixes: list[str] = []
    for p in (sys.base_prefix, sys.base_exec_prefix, os.path.dirname(os.path.dirname(exe))):
        p = os.path.realpath(p)
        if not _under(p, "/usr") and not any(_under(p, q) for q in prefixes):
            prefixes.append(p)
    return Interpreter(exe, tuple(prefixes))


def reachable_by_others(path: str) -> bool:
    """Whether a user with no relation to the file's owner can traverse to and run ``path``."""
    import stat

    try:
        for parent in ancestors(path) + [path]:
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return False
    except OSError:
        return False
    return True


def unsafe_interpreter() -> Interpreter | None:
    """An interpreter a throw-away uid can run without namespaces, or ``None``.

    Without a mount namespace nothing can be bound into view, so the caller's own
    interpreter only works when others can reach it (pyenv under ``/root`` cannot).
    """
    interp = current_interpreter()
    if reachable_by_others(interp.executable):
        return interp
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        real = os.path.realpath(candidate)
        if os.path.exists(real) and reachable_by_others(real):
            return Interpreter(real, ())
    return None


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def system_dirs() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Mirrors the host's top-level system directories: (symlinks, read-only binds).

    Merged-/usr systems have ``/bin -> usr/bin`` and friends as symlinks; older layouts
    have real directories, which are bound read-only instead.
    """
    symlinks: list[tuple[str, str]] = []
    binds: list[tuple[str, str]] = [("/usr", "/usr")]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = "/" + name
        if os.path.islink(path):
            symlinks.append((os.readlink(path), path))
        elif os.path.isdir(path):
            binds.append((path, path))
    return symlinks, binds


def ancestors(path: str) -> list[str]:
    """``/a/b/c`` -> ``["/a", "/a/b"]``."""
    parts = path.strip("/").split("/")[:-1]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


@dataclass(frozen=True)
class RunPaths:
    run_dir: str
    ctl_dir: str
    files_dir: str
    root_dir: str
    work_dir: str
    file_names: tuple[str, ...]


def bwrap_command(paths: RunPaths, interp: Interpreter, *, as_root: bool,
                  tmp_bytes: int, work_bytes: int) -> list[str]:
    cmd = [shutil.which("bwrap") or "bwrap",
           "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
           "--die-with-parent", "--new-session",
           # The launcher is PID 1 and reaps; bwrap's own reaper would be orphaned to the
           # host's init on exit (a zombie wherever init is slow to reap).
           "--as-pid-1"]
    if as_root:
        # Privileged bwrap keeps every capability unless told otherwise; the launcher
        # needs only setuid/setgid to switch to the run's throw-away uid.
        cmd += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        cmd += ["--unshare-user", "--uid", "65534", "--gid", "65534"]
    symlinks, binds = system_dirs()
    for src, dest in binds:
        cmd += ["--ro-bind", src, dest]
    for target, link in symlinks:
        cmd += ["--symlink", target, link]
    for prefix in interp.prefixes:
        for parent in ancestors(prefix):
            cmd += ["--perms", "0755", "--dir", parent]
        cmd += ["--ro-bind", prefix, prefix]
    cmd += ["--proc", "/proc", "--dev", "/dev",
            "--perms", "1777", "--size", str(tmp_bytes), "--tmpfs", TMP_DIR,
            "--perms", "1777", "--size", str(work_bytes), "--tmpfs", WORK_DIR]
    for name in paths.file_names:
        for parent in ancestors(f"{WORK_DIR}/{name}"):
            if _under(parent, WORK_DIR) and parent != WORK_DIR:
                cmd += ["--perms", "0755", "--dir", parent]
        cmd += ["--ro-bind", os.path.join(paths.files_dir, name), f"{WORK_DIR}/{name}"]
    cmd += ["--ro-bind", paths.ctl_dir, CTL_DIR, "--remount-ro", "/",
            "--chdir", WORK_DIR, "--clearenv", "--setenv", "PATH", SANDBOX_PATH,
            "--", interp.executable, "-I", "-S", f"{CTL_DIR}/launcher.py", f"{CTL_DIR}/spec.json"]
    return cmd


def unshare_command(paths: RunPaths, interp: Interpreter, *, as_root: bool) -> list[str]:
    cmd = [shutil.which("unshare") or "unshare"]
    if not as_root:
        cmd += ["--user", "--map-root-user"]
    cmd += ["--mount", "--pid", "--net", "--ipc", "--uts", "--fork", "--kill-child",
            "--propagation", "private", "--",
            interp.executable, "-I", "-S", os.path.join(paths.ctl_dir, "launcher.py"),
            os.path.join(paths.ctl_dir, "spec.json")]
    return cmd


def unsafe_command(paths: RunPaths, interp: Interpreter) -> list[str]:
    return [interp.executable, "-I", "-S", os.path.join(paths.ctl_dir, "launcher.py"),
            os.path.join(paths.ctl_dir, "spec.json")]


def unshare_root_spec(paths: RunPaths, interp: Interpreter, *, tmp_bytes: int,
                      work_bytes: int) -> dict:
    """The part of the launcher spec that tells it how to build the root (unshare backend)."""
    symlinks, binds = system_dirs()
    binds = binds + [(p, p) for p in interp.prefixes]
    return {
        "build_root": True,
        "root_dir": paths.root_dir,
        "symlinks": symlinks,
        "ro_binds": binds,
        "tmp_dir": TMP_DIR,
        "tmp_bytes": tmp_bytes,
        "work_dir": WORK_DIR,
        "work_bytes": work_bytes,
        "work_files": [(os.path.join(paths.files_dir, n), f"{WORK_DIR}/{n}") for n in paths.file_names],
    }
