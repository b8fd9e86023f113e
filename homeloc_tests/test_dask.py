"""Issue 15: batches on a Dask cluster, and the NFS-safe batch lease.

The cluster is real: a ``dask scheduler`` and two ``dask worker`` processes
(``--nthreads 1 --no-nanny``) on loopback, started from the venv's CLI with
this worktree on their PYTHONPATH. ``homeloc run --dask`` is compared byte for
byte with a local run, once with a worker killed (``kill -9``) in the middle
of a batch it holds. The lease tests contend with real processes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from homeloc_tests.helpers import HOMELOC, env_for, export_files, homeloc, stray_files

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent
USERS, BATCH_USERS = 4000, "250"  # 16 batches

#: `make test` runs the worker killed mid-batch (compared byte for byte with the local run)
#: and the lease tests; the other cluster runs and faults are marked heavy (`make test-all`)


def _env() -> dict:
    return env_for({"PYTHONPATH": str(ROOT), "DASK_DISTRIBUTED__WORKER__DAEMON": "False"})


def _dask(*args: str, log: Path, env: dict | None = None, prefix: tuple = ()) -> subprocess.Popen:
    exe = BIN / "dask"
    if not exe.exists():
        pytest.skip(f"no dask CLI in {BIN}")
    cmd = [*prefix, *args] if prefix[:1] == (sys.executable,) else [*prefix, str(exe), *args]
    return subprocess.Popen(cmd, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, env=env or _env(), cwd=log.parent)


class Cluster:
    """A loopback scheduler and its workers, all of them our child processes."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.file = tmp / "scheduler.json"
        self.scheduler = _dask("scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(self.file),
                               log=tmp / "scheduler.log")
        self.workers: list[subprocess.Popen] = []
        deadline = time.monotonic() + 60
        while not self.file.exists():
            assert self.scheduler.poll() is None, (tmp / "scheduler.log").read_text()
            assert time.monotonic() < deadline, "scheduler did not start"
            time.sleep(0.1)
        time.sleep(0.2)  # written in one go, but let it be complete
        self.address = json.loads(self.file.read_text())["address"]

    def add_worker(self, name: str, env: dict | None = None, prefix: tuple = ()) -> subprocess.Popen:
        w = _dask("worker", self.address, "--nthreads", "1", "--nworkers", "1", "--no-nanny",
                  "--no-dashboard", "--host", "127.0.0.1", "--name", name,
                  log=self.tmp / f"{name}.log", env=env, prefix=prefix)
        self.workers.append(w)
        return w

    def wait_for(self, n: int) -> None:
        from distributed import Client

        with Client(self.address, timeout=30, set_as_default=False) as c:
            c.wait_for_workers(n, timeout=60)

    def remove(self, w: subprocess.Popen) -> None:
        w.kill()
        w.wait(timeout=30)
        self.workers.remove(w)

    def stop(self) -> None:
        for p in [*self.workers, self.scheduler]:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in [*self.workers, self.scheduler]:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("dask"))
    try:
        c.add_worker("w1")
        c.add_worker("w2")
        c.wait_for(2)
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A synthetic input and the exports of a local run (process pool of 1)."""
    from homeloc_assets.synth import generate

    tmp = tmp_path_factory.mktemp("dask_case")
    src = tmp / "users.csv"
    generate(USERS, src, seed=15)
    ref = tmp / "ref"
    homeloc("run", "--input", str(src), "--out", str(ref), "--workers", "1", "--quiet",
            "--no-figures", "--batch-users", BATCH_USERS)
    return src, export_files(ref)


def _run_args(src: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--input", str(src), "--out", str(out), "--quiet", "--no-figures",
            "--batch-users", BATCH_USERS, *extra]


def _error_line(res: subprocess.CompletedProcess) -> str:
    lines = res.stderr.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("homeloc: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], res.stderr
    return errors[0]


# ----------------------------------------------------------------- the cluster
@pytest.mark.heavy  # CI time; the killed-worker test compares with the local run too
def test_dask_run_is_byte_identical_to_the_local_pool(cluster, case, tmp_path):
    src, ref = case
    out = tmp_path / "out"
    homeloc(*_run_args(src, out, "--dask", cluster.address), env=_env())
    assert export_files(out) == ref
    assert not stray_files(out), stray_files(out)
    # both workers ran batches (a worker sets up its state on its first batch of a run)
    from distributed import Client

    with Client(cluster.address, timeout=30, set_as_default=False) as c:
        tokens = c.run(_run_token)
    assert len(tokens) == 2 and all(tokens.values()), tokens
    assert len(set(tokens.values())) == 1  # of the same run


def _run_token() -> str | None:
    from homeloc_assets import batch_runner

    return batch_runner._STATE.get("dask_token")


@pytest.mark.heavy
def test_env_var_and_scheduler_file_select_the_cluster(cluster, case, tmp_path):
    src, ref = case
    out = tmp_path / "out"
    res = homeloc("run", "--input", str(src), "--out", str(out), "--no-figures",
                  "--batch-users", BATCH_USERS,
                  env={**_env(), "HOMELOC_DASK_SCHEDULER": str(cluster.file)})
    assert f"Dask cluster {cluster.file}" in res.stderr
    assert export_files(out) == ref


@pytest.mark.heavy
def test_unreachable_scheduler_bad_address_and_wait_are_one_line(case, tmp_path):
    from homeloc_assets.executors import ClusterError, connect
    from homeloc_assets.settings import Settings

    with pytest.raises(ClusterError, match=r"^cannot reach the Dask scheduler at tcp://127.0.0.1:9: "):
        connect("tcp://127.0.0.1:9", timeout=0.5)
    with pytest.raises(ClusterError, match="^Dask scheduler file not found: "):
        connect(str(tmp_path / "nope.json"), timeout=0.5)
    wait = Settings.from_env({"HOMELOC_DASK_WAIT": "7.5"}).dask_wait
    assert wait == 7.5 and Settings.from_env({}).dask_wait == 120
    for bad in ("soon", "-1"):
        with pytest.raises(ValueError, match="HOMELOC_DASK_WAIT"):
            Settings.from_env({"HOMELOC_DASK_WAIT": bad})
    src, _ = case
    res = homeloc(*_run_args(src, tmp_path / "o2", "--dask", "127.0.0.1:8786"),
                  env=_env(), check=False)
    assert res.returncode == 2
    assert "give a scheduler address like tcp://host:8786" in _error_line(res)
    res = homeloc(*_run_args(src, tmp_path / "o3"), check=False,
                  env={**_env(), "HOMELOC_DASK_SCHEDULER": "http://x:1"})
    assert res.returncode == 2 and "HOMELOC_DASK_SCHEDULER='http://x:1'" in _error_line(res)


@pytest.mark.heavy
def test_no_worker_in_time_is_one_line(tmp_path, case):
    from homeloc_assets.executors import ClusterError, check_workers, connect

    src, _ = case
    c = Cluster(tmp_path)
    try:
        client = connect(c.address, timeout=30)
        with pytest.raises(ClusterError, match=rf"^no Dask worker connected to {c.address} "
                                               r"within 0.5 s \(start one with: dask worker"):
            check_workers(client, [str(src)], str(tmp_path / "storage"), wait=0.5)
        client.close()
    finally:
        c.stop()


NO_HOMELOC = ("import sys; sys.modules['homeloc_assets'] = None; "  # import fails there
              "from distributed.cli.dask_worker import main; "
              "sys.argv = ['dask-worker'] + sys.argv[2:]; main()")


def _check_with_extra_worker(cluster, name: str, src: Path, storage: Path, **kw) -> str:
    """Add worker ``name`` to the cluster, probe all workers, remove it; the error message."""
    from homeloc_assets.executors import ClusterError, check_workers, connect

    w = cluster.add_worker(name, **kw)
    try:
        cluster.wait_for(3)
        client = connect(cluster.address, timeout=30)
        try:
            with pytest.raises(ClusterError) as err:
                check_workers(client, [str(src)], str(storage), wait=5)
        finally:
            client.close()
    finally:
        cluster.remove(w)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("dask worker tcp://127.0.0.1:"), msg
    return msg


@pytest.mark.heavy
def test_workers_without_homeloc_or_with_other_code_are_named(cluster, case, tmp_path):
    src, _ = case
    other = tmp_path / "other"
    shutil.copytree(ROOT / "homeloc_assets", other / "homeloc_assets",
                    ignore=shutil.ignore_patterns("__pycache__"))
    with (other / "homeloc_assets" / "tables.py").open("a") as fh:
        fh.write("\n# an edit the client does not have\n")
    msg = _check_with_extra_worker(cluster, "other", src, tmp_path / "s",
                                   env={**_env(), "PYTHONPATH": str(other)})
    assert "runs other homeloc code" in msg and "install the same version everywhere" in msg
    msg = _check_with_extra_worker(cluster, "nohomeloc", src, tmp_path / "s",
                                   prefix=(sys.executable, "-c", NO_HOMELOC))
    assert "cannot run homeloc" in msg and "PYTHONPATH" in msg


def _unshare_ok() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _unshare_ok(), reason="needs root and unshare(1) for a private mount")
@pytest.mark.heavy
def test_a_worker_that_cannot_see_the_shared_folder_is_named(cluster, tmp_path, case):
    """A worker in its own mount namespace with an empty tmpfs over the 'shared' folder
    is a worker on a machine where that filesystem is not mounted; the run stops with
    one line naming it, before any batch."""
    src, _ = case
    shared = tmp_path / "shared"
    shared.mkdir()
    data = shared / "users.csv"
    shutil.copyfile(src, data)
    w = cluster.add_worker("blind", prefix=(
        "unshare", "--mount", "--propagation", "private", "sh", "-c",
        f'mount -t tmpfs none "{shared}" && exec "$0" "$@"'))
    try:
        cluster.wait_for(3)
        res = homeloc(*_run_args(data, shared / "out", "--dask", cluster.address),
                      env=_env(), check=False)
    finally:
        cluster.remove(w)
    line = _error_line(res)
    assert res.returncode == 1
    assert "dask worker tcp://127.0.0.1:" in line and f"cannot see the input file {data}" in line
    assert "filesystem shared by the workers" in line
    assert not list((shared / "out" / ".homeloc" / "batch_stats").glob("*.json"))
    assert not (shared / "out" / "summary.json").exists()


@pytest.mark.slow
@pytest.mark.heavy  # CI time: make test must stay under 15 minutes on this machine
def test_a_worker_killed_mid_batch_changes_nothing(cluster, case, tmp_path):
    """kill -9 the worker that holds a batch's lease once a first batch is finished:
    the scheduler reruns that batch on the other worker, which takes the lease
    over; batches finished before are not written again; exports identical."""
    src, ref = case
    out = tmp_path / "out"
    stats = out / ".homeloc" / "batch_stats"
    locks = stats / ".locks"
    pids = {w.pid: w for w in cluster.workers}
    proc = subprocess.Popen([*HOMELOC,
                             *_run_args(src, out, "--dask", cluster.address)],
                            stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=_env())
    killed, finished_before = None, {}
    deadline = time.monotonic() + 120
    try:
        while killed is None and proc.poll() is None and time.monotonic() < deadline:
            done = list(stats.glob("*.json")) if stats.exists() else []
            if done:
                for lease_file in (locks.glob("*.lease") if locks.exists() else []):
                    try:
                        holder = json.loads(lease_file.read_text())
                    except (OSError, ValueError):
                        continue
                    key = lease_file.name.removesuffix(".lease")
                    if holder["pid"] in pids and not (stats / f"{key}.json").exists():
                        finished_before = {p.name: p.stat().st_ino for p in stats.glob("*.json")}
                        os.kill(holder["pid"], signal.SIGKILL)
                        killed = (holder["pid"], key)
                        break
            time.sleep(0.002)
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed is not None, "no batch was caught in the middle"
    pid, key = killed
    cluster.remove(pids[pid])
    assert proc.returncode == 0, err.decode()
    assert export_files(out) == ref
    assert (stats / f"{key}.json").exists()
    assert not stray_files(out), stray_files(out)  # its temporaries were cleaned
    # batches finished before the kill were not written again
    assert {n: (stats / n).stat().st_ino for n in finished_before} == finished_before


# ------------------------------------------------------------------ the lease
HOLD = """
import sys, time
from homeloc_assets.lease import lease
with lease(sys.argv[1], timeout=float(sys.argv[2]), heartbeat=0.05) as held:
    print("held", flush=True)
    for _ in range(int(float(sys.argv[3]) / 0.05)):
        time.sleep(0.05)
        if held.lost:
            print("lost", flush=True)
            break
"""

COUNT = """
import sys, time
from pathlib import Path
from homeloc_assets.lease import lease
counter = Path(sys.argv[2])
for _ in range(int(sys.argv[3])):
    with lease(sys.argv[1], timeout=30):
        n = int(counter.read_text())
        time.sleep(0.003)
        counter.write_text(str(n + 1))
"""


def _py(code: str, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], env=_env(), **kw)


def _holder(path: Path, timeout: float, seconds: float) -> subprocess.Popen:
    p = _py(HOLD, str(path), str(timeout), str(seconds), stdout=subprocess.PIPE)
    assert p.stdout.readline().strip() == b"held"
    return p


def test_three_processes_contending_never_hold_the_lease_together(tmp_path):
    counter = tmp_path / "counter"
    counter.write_text("0")
    procs = [_py(COUNT, str(tmp_path / "k.lease"), str(counter), "25") for _ in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    assert counter.read_text() == "75"  # no lost update: the holders never overlapped
    assert list(tmp_path.iterdir()) == [counter]  # leases and breakers all gone


def test_stale_lease_of_a_killed_holder_is_taken_over_at_once(tmp_path):
    from homeloc_assets.lease import Lease

    path = tmp_path / "k.lease"
    p = _holder(path, timeout=3600, seconds=600)
    holder = json.loads(path.read_text())
    p.kill()
    p.wait(timeout=30)
    t0 = time.monotonic()
    got = Lease(path, timeout=3600).acquire()  # same machine, pid dead: no waiting for 1 h
    try:
        assert got.took_over is not None and got.took_over.pid == holder["pid"]
        assert json.loads(path.read_text())["token"] == got.token
        assert time.monotonic() - t0 < 600
    finally:
        got.release()
    assert not path.exists()


def test_lease_of_another_machine_is_stale_only_without_heartbeat(tmp_path):
    """A lease from another host is judged by its heartbeat (mtime), never by its pid."""
    import threading

    from homeloc_assets.lease import Lease

    path = tmp_path / "k.lease"
    foreign = {"host": "node17", "node": "other-boot:1", "pid": os.getpid(), "token": "t" * 32}
    path.write_text(json.dumps(foreign))
    stop = threading.Event()

    def beat():  # the other machine's heartbeat
        while not stop.wait(0.05):
            os.utime(path)

    t = threading.Thread(target=beat)
    t.start()
    waiter = Lease(path, timeout=0.6)
    result = {}
    w = threading.Thread(target=lambda: result.setdefault("lease", waiter.acquire()))
    w.start()
    w.join(2.0)
    assert w.is_alive()  # held for over 3 timeouts: alive while its mtime moves
    stop.set()
    t.join()
    w.join(30)  # heartbeat stopped: taken over after the timeout
    assert not w.is_alive()
    got = result["lease"]
    assert got.took_over is not None and got.took_over.host == "node17"
    got.release()


def test_a_stalled_holder_learns_its_lease_was_taken_over(tmp_path):
    from homeloc_assets.lease import Lease, LeaseLost

    path = tmp_path / "k.lease"
    p = _holder(path, timeout=0.5, seconds=60)
    os.kill(p.pid, signal.SIGSTOP)  # alive but silent, like a hung NFS client
    try:
        got = Lease(path, timeout=0.5).acquire()
        assert got.took_over is not None and got.took_over.pid == p.pid
    finally:
        os.kill(p.pid, signal.SIGCONT)
    assert p.stdout.readline().strip() == b"lost"
    assert p.wait(timeout=30) == 0
    assert json.loads(path.read_text())["token"] == got.token  # its exit left ours alone
    got.check()
    got.release()
    with pytest.raises(LeaseLost):
        got.check()


@pytest.mark.heavy
def test_killed_batch_holder_leaves_nothing_after_the_next_run(case, tmp_path):
    """A process killed while holding a batch's lease with half-written files: the
    next run takes its lease over, removes the temporaries and computes the batch."""
    from homeloc_assets.batch_runner import BATCH_TABLES
    from homeloc_assets.catalog import Catalog

    src, ref = case
    out = tmp_path / "out"
    storage = out / ".homeloc"
    _, keys = Catalog(storage).register(src, int(BATCH_USERS))
    key = keys[3]
    half = [storage / "assets" / a / f".{key}.parquet.x1y2z3.tmp" for a in BATCH_TABLES]
    for h in half:
        h.parent.mkdir(parents=True, exist_ok=True)
        h.write_bytes(b"PAR1 half")
    p = _holder(storage / "batch_stats" / ".locks" / f"{key}.lease", timeout=3600, seconds=600)
    p.kill()
    p.wait(timeout=30)
    homeloc(*_run_args(src, out, "--workers", "1"), env=_env())
    assert export_files(out) == ref
    assert not stray_files(out), stray_files(out)
