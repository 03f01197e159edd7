"""The sandbox attack corpus: each attack must be contained, leaving no process behind.

Every attack runs under each isolating backend that works on this machine (bubblewrap,
util-linux unshare). After each run we look for leftovers: any process of the run's
throw-away uid (runs as root get a fresh uid each) and any new zombie bwrap, unshare or
python process (an orphan that nobody reaps).
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time

import pytest

from agent_lightning.sandbox import SandboxUnavailableError, available_backend, run_python
from agent_lightning.sandbox import runner

ISOLATING = ("bwrap", "unshare")


def _working(name: str) -> bool:
    return runner._probe(name) is None


@pytest.fixture(params=ISOLATING)
def backend(request):
    if not _working(request.param):
        pytest.skip(f"{request.param} backend unavailable here: {runner._probe(request.param)}")
    return request.param


def test_an_isolating_backend_is_available():
    assert available_backend() in ISOLATING


def _processes() -> dict[int, tuple[int, str, str, str]]:
    """pid -> (uid, name, state, command line) of every process now."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as fh:
                fields = dict(line.split(":", 1) for line in fh.read().splitlines() if ":" in line)
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        out[int(entry)] = (int(fields["Uid"].split()[0]), fields["Name"].strip(), fields["State"].strip(), cmdline)
    return out


ZOMBIE_GRACE_S = 3.0
"""A zombie is a process that has exited and waits for its parent's ``wait``: it counts as left
behind only if nobody reaps it within this time. A process of another sandbox that is exiting
at the moment /proc is read (a concurrent test worker's) is a zombie for that instant, and an
orphan is reaped by whatever pid 1 is, when it gets to it. A running leftover fails at once."""


def _leftovers(result, before: dict) -> list[str]:
    """Processes this run left behind: any of its uid, any new zombie of the tools involved
    that stays unreaped for ``ZOMBIE_GRACE_S``.

    Scoped to this run (not every sandbox uid) so that sandboxes run by a concurrent test
    session on the same machine are not mistaken for ours.
    """
    deadline = time.monotonic() + ZOMBIE_GRACE_S
    while True:
        found = []
        for pid, (uid, name, state, cmdline) in _processes().items():
            ours = result.uid is not None and uid == result.uid
            new_zombie = (state.startswith("Z") and name in ("bwrap", "unshare", "python3", "python3.11")
                          and pid not in before)
            if ours or new_zombie:
                found.append((state, f"pid {pid} uid {uid} {name} {state} {cmdline[:80]!r}"))
        if not found or any(not state.startswith("Z") for state, _ in found) or time.monotonic() > deadline:
            return [line for _, line in found]
        time.sleep(0.05)


def _run(source: str, backend: str, **kw):
    kw.setdefault("timeout_s", 3)
    kw.setdefault("memory_mb", 128)
    before = _processes()
    result = run_python(source, backend=backend, **kw)
    if os.geteuid() == 0:
        assert result.uid is not None
    assert _leftovers(result, before) == [], "leftover processes right after the run"
    return result


def test_file_writes_outside_work_dir_do_not_reach_host(backend, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    os.chmod(tmp_path, 0o777)
    os.chmod(victim, 0o777)  # world-writable: only isolation can stop the write
    name = "alr-canary-" + secrets.token_hex(4)
    targets = [str(victim / name), f"/tmp/{name}", f"/etc/{name}", f"/usr/{name}", f"/root/{name}",
               f"/var/tmp/{name}", f"/dev/shm/{name}", os.path.join(os.getcwd(), name),
               "main.py", "data.txt"]
    source = f"""
import os
for path in {targets!r}:
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w") as fh:
            fh.write("pwned")
        print("wrote", path)
    except OSError as exc:
        print("blocked", path, type(exc).__name__)
"""
    result = _run(source, backend, files={"data.txt": "original"})
    assert result.exit_code == 0, result.stderr
    assert "wrote main.py" not in result.stdout and "wrote data.txt" not in result.stdout
    assert list(victim.iterdir()) == []
    for path in targets[1:-2]:
        assert not os.path.exists(path), f"sandbox created {path} on the host"


def test_network_is_unreachable_canary_sees_nothing(backend):
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(8)
    tcp.settimeout(0.2)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(0.2)
    hits = []

    def watch(stop):
        while not stop.is_set():
            try:
                conn, _ = tcp.accept()
                hits.append("tcp")
                conn.close()
            except OSError:
                pass
            try:
                udp.recvfrom(100)
                hits.append("udp")
            except OSError:
                pass

    stop = threading.Event()
    thread = threading.Thread(target=watch, args=(stop,), daemon=True)
    thread.start()
    try:
        tport, uport = tcp.getsockname()[1], udp.getsockname()[1]
        source = f"""
import socket
for host in ("127.0.0.1", "localhost", "::1", "10.0.0.1", "1.1.1.1"):
    try:
        socket.create_connection((host, {tport}), timeout=0.5).sendall(b"leak")
        print("connected", host)
    except OSError as exc:
        print("blocked", host, type(exc).__name__)
try:
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"leak", ("127.0.0.1", {uport}))
    print("udp sent")
except OSError as exc:
    print("udp blocked", type(exc).__name__)
"""
        result = _run(source, backend)
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join()
        tcp.close()
        udp.close()
    assert result.exit_code == 0, result.stderr
    assert "connected" not in result.stdout
    assert hits == []


def test_secrets_in_environment_and_host_files_are_invisible(backend, tmp_path, monkeypatch):
    env_secret = "alr-env-" + secrets.token_hex(8)
    file_secret = "alr-file-" + secrets.token_hex(8)
    monkeypatch.setenv("ALIGHTNING_CANARY_SECRET", env_secret)
    os.chmod(tmp_path, 0o755)
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text(file_secret)
    os.chmod(secret_file, 0o644)
    source = f"""
import os, glob
print(dict(os.environ))
for path in glob.glob("/proc/*/environ") + [{str(secret_file)!r}, "/root/.bash_history", "/etc/shadow"]:
    try:
        print(path, open(path, "rb").read()[:2000])
    except OSError as exc:
        print("blocked", path, type(exc).__name__)
"""
    result = _run(source, backend)
    assert result.exit_code == 0, result.stderr
    for secret in (env_secret, file_secret):
        assert secret not in result.stdout and secret not in result.stderr


def test_fork_bomb_is_contained_and_sandboxes_start_right_after(backend):
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    result = _run(bomb, backend, timeout_s=1.5)
    assert result.timed_out and result.stopped_reason == "timeout"
    started = 0
    for i in range(10):
        after = _run(f"print({i} * 3)", backend)
        started += after.exit_code == 0 and after.stdout == f"{i * 3}\n"
    assert started == 10


def test_memory_bomb_hits_the_address_space_limit(backend):
    source = "chunks = []\nwhile True:\n    chunks.append(bytearray(16 << 20))\n"
    result = _run(source, backend, memory_mb=96)
    assert result.exit_code != 0 and result.stopped_reason == "memory_limit"
    assert not result.timed_out


def test_infinite_loop_is_stopped_at_the_wall_clock_timeout(backend):
    result = _run("while True:\n    pass\n", backend, timeout_s=1.0)
    assert result.timed_out and result.stopped_reason == "timeout"
    assert result.exit_code == 137
    assert 1.0 <= result.duration_s < 3.0


def test_detached_grandchild_dies_with_the_run(backend):
    token = f"{secrets.randbelow(10**6)}.25"
    source = f"""
import os
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv("/usr/bin/sleep", ["sleep", "{token}"])
    os._exit(0)
print("parent exits")
"""
    before = _processes()
    result = _run(source, backend)
    assert result.exit_code == 0 and result.stdout == "parent exits\n"
    time.sleep(1.0)
    assert _leftovers(result, before) == []
    leftovers = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                if token.encode() in fh.read():
                    leftovers.append(entry)
        except OSError:
            continue
    assert leftovers == []


def test_output_flood_is_cut_at_the_cap(backend):
    result = _run("while True:\n    print('x' * 10000)\n", backend, max_output_bytes=200_000)
    assert result.stopped_reason == "output_limit" and not result.timed_out
    assert 0 < len(result.stdout) <= 200_000


def test_results_report_limits_and_files(backend):
    source = "import os\nprint(open('in/data.txt').read(), os.getcwd())\nopen('big', 'wb').write(b'x' * 5_000_000)\n"
    result = _run(source, backend, files={"in/data.txt": "hello"}, max_file_bytes=1_000_000)
    assert result.stdout.startswith("hello /sandbox")
    assert result.stopped_reason == "file_size_limit"


def test_unsafe_mode_warns_and_refusal_names_the_fix(monkeypatch):
    with pytest.warns(RuntimeWarning, match="WITHOUT ISOLATION"):
        result = run_python("print('plain')", timeout_s=5, memory_mb=128, backend="unsafe")
    assert result.stdout == "plain\n" and result.backend == "unsafe"
    monkeypatch.setattr(runner, "_probe", lambda name: f"{name} disabled for the test")
    monkeypatch.delenv(runner.BACKEND_ENV, raising=False)
    monkeypatch.delenv(runner.UNSAFE_ENV, raising=False)
    with pytest.raises(SandboxUnavailableError, match="bubblewrap.*allow_unsafe=True"):
        run_python("print(1)", timeout_s=5, memory_mb=128)
    monkeypatch.setenv(runner.UNSAFE_ENV, "1")
    assert available_backend() == "unsafe"


def test_bad_arguments_name_the_culprit():
    with pytest.raises(ValueError, match="timeout_s"):
        run_python("pass", timeout_s=0, memory_mb=128)
    with pytest.raises(ValueError, match="memory_mb"):
        run_python("pass", timeout_s=1, memory_mb=4)
    with pytest.raises(ValueError, match="bad file name"):
        run_python("pass", timeout_s=1, memory_mb=128, files={"../x": "y"})


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start a process as another uid")
def test_the_leftover_check_sees_a_stray_process():
    import subprocess
    import types

    uid = runner._pick_uid()
    before = _processes()
    stray = subprocess.Popen(["sleep", "30"], user=uid, group=uid)
    try:
        time.sleep(0.1)
        assert any(f"pid {stray.pid} " in line for line in _leftovers(types.SimpleNamespace(uid=uid), before))
    finally:
        stray.kill()
        stray.wait()
    assert _leftovers(types.SimpleNamespace(uid=uid), before) == []


def test_concurrent_runs_from_threads_are_isolated(backend):
    """Environments step in a thread pool: sandboxes started at once must not interfere."""
    from concurrent.futures import ThreadPoolExecutor

    source = "import os, sys\nopen('/tmp/mine', 'w').write(sys.argv[0])\nprint(os.getuid(), sorted(os.listdir('/tmp')))\n"
    before = _processes()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: run_python(source, timeout_s=10, memory_mb=128, backend=backend), range(8)))
    assert [r.exit_code for r in results] == [0] * 8
    assert all(r.stdout.split(" ", 1)[1] == "['mine']\n" for r in results)  # private /tmp each
    if os.geteuid() == 0:
        assert len({r.uid for r in results}) == 8
        assert {r.stdout.split()[0] for r in results} == {str(r.uid) for r in results}
    for r in results:
        assert _leftovers(r, before) == []
