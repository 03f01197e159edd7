"""In-sandbox launcher: the first Python code that runs inside a sandbox.

This file is copied into every sandbox and run as ``python -I -S launcher.py SPEC``
before any untrusted code. It must stay standalone (standard library only, no
``agent_lightning`` imports: the package is not visible inside the sandbox).

Steps, in order:

1. ``build_root`` (``unshare`` backend only; bubblewrap does this itself): make mounts
   private, build a fresh tmpfs root holding read-only binds of ``/usr`` and the Python
   prefix, a few device nodes, a new ``/proc``, a size-capped ``/tmp`` and work
   directory with the task files bound read-only, then ``pivot_root`` into it.
2. Drop privileges: as host root, switch to the run's throw-away uid/gid (unique per run,
   so ``RLIMIT_NPROC`` counts this sandbox alone); as the root of a user namespace made by
   an unprivileged caller, enter a nested user namespace, which leaves no capability over
   the mounts. Then ``PR_SET_NO_NEW_PRIVS``.
3. Resource limits: CPU seconds, address space, processes, file size, open files, no core.
4. Exec the program. When this process is PID 1 of a new PID namespace (both namespace
   backends) it forks instead, reaps every zombie, and exits with the program's status,
   which makes the kernel kill whatever the program left behind.

Exit status 128+N means "killed by signal N"; 125 means the launcher itself failed.
"""

import ctypes
import errno
import json
import os
import platform
import resource
import sys

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_RELATIME = 1 << 21
MNT_DETACH = 2
CLONE_NEWUSER = 0x10000000
PR_SET_NO_NEW_PRIVS = 38
# pivot_root has no libc wrapper; its syscall number per architecture.
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}

# statvfs f_flag bit -> mount flag that must be kept when remounting a locked mount.
_LOCKED_FLAGS = {
    os.ST_NOSUID: MS_NOSUID,
    os.ST_NODEV: MS_NODEV,
    os.ST_NOEXEC: MS_NOEXEC,
    os.ST_NOATIME: MS_NOATIME,
    os.ST_NODIRATIME: MS_NODIRATIME,
    os.ST_RELATIME: MS_RELATIME,
}

_libc = None


def _c():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _check(rc, what):
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, "%s: %s" % (what, os.strerror(err)))


def _mount(source, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    _check(_c().mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
           "mount %s on %s" % (source, target))


def _makedirs(path):
    os.makedirs(path, mode=0o755, exist_ok=True)


def _bind(source, target, readonly):
    if os.path.isdir(source):
        _makedirs(target)
    else:
        _makedirs(os.path.dirname(target))
        if not os.path.exists(target):
            open(target, "w").close()
    _mount(source, target, None, MS_BIND | MS_REC)
    if readonly:
        kept = 0
        vfs = os.statvfs(target)
        for st_flag, ms_flag in _LOCKED_FLAGS.items():
            if vfs.f_flag & st_flag:
                kept |= ms_flag
        _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | kept)


def build_root(spec):
    """Builds and enters the sandbox's root file system (``unshare`` backend)."""
    root = spec["root_dir"]
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=4m,mode=0755")
    for entry in spec["symlinks"]:
        os.symlink(entry[0], root + entry[1])
    for src, dest in spec["ro_binds"]:
        _bind(src, root + dest, readonly=True)
    _makedirs(root + "/dev")
    for name in ("null", "zero", "full", "random", "urandom"):
        _bind("/dev/" + name, root + "/dev/" + name, readonly=False)
    _makedirs(root + "/proc")
    try:
        _mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError:
        # Refused where the host's /proc is partly masked (containers); Python runs
        # without it, and the host's /proc stays invisible either way.
        pass
    for path, size in ((spec["tmp_dir"], spec["tmp_bytes"]), (spec["work_dir"], spec["work_bytes"])):
        _makedirs(root + path)
        _mount("tmpfs", root + path, "tmpfs", MS_NOSUID | MS_NODEV, "size=%d,mode=1777" % size)
    for src, dest in spec["work_files"]:
        _bind(src, root + dest, readonly=True)
    os.chdir(root)
    _check(_c().syscall(_SYS_PIVOT_ROOT[platform.machine()], b".", b"."), "pivot_root")
    _check(_c().umount2(b".", MNT_DETACH), "umount old root")
    os.chdir("/")
    _mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def drop_privileges(spec):
    uid = spec.get("uid")
    if uid is not None and os.getuid() == 0:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        if os.getuid() != uid or os.geteuid() != uid:
            raise OSError(errno.EPERM, "could not switch to uid %d" % uid)
    elif spec.get("nested_userns"):
        # We are root of a user namespace we own; a nested one strips every capability
        # over this namespace's mounts (they stay read-only and un-unmountable).
        _check(_c().unshare(CLONE_NEWUSER), "unshare(CLONE_NEWUSER)")
    _check(_c().prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")


def set_limits(limits):
    cpu = int(limits["cpu_s"])
    pairs = [
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),
        (resource.RLIMIT_AS, (limits["as_bytes"],) * 2),
        (resource.RLIMIT_NPROC, (limits["nproc"],) * 2),
        (resource.RLIMIT_FSIZE, (limits["fsize_bytes"],) * 2),
        (resource.RLIMIT_NOFILE, (limits["nofile"],) * 2),
        (resource.RLIMIT_CORE, (0, 0)),
    ]
    for which, value in pairs:
        resource.setrlimit(which, value)


def _status_to_code(status):
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _exec(spec):
    os.execve(spec["argv"][0], spec["argv"], spec["env"])


def main():
    with open(sys.argv[1]) as fh:
        spec = json.load(fh)
    try:
        if spec.get("build_root"):
            build_root(spec)
        drop_privileges(spec)
        os.chdir(spec["cwd"])
        set_limits(spec["limits"])
        os.umask(0o022)
    except Exception as exc:  # noqa: BLE001 - reported to the host as a setup failure
        sys.stderr.write("alightning-sandbox: setup failed: %r\n" % (exc,))
        sys.stderr.flush()
        os._exit(125)
    if not spec.get("reaper"):
        _exec(spec)
    child = os.fork()
    if child == 0:
        try:
            _exec(spec)
        finally:
            os._exit(127)
    code = 125
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid == child:
            code = _status_to_code(status)
            break
    sys.stdout.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
