"""Where batches run: the local process pool (default) or a Dask distributed cluster.

With a scheduler address (``HOMELOC_DASK_SCHEDULER=tcp://host:8786``, the
``dask_scheduler`` field of the ``homeloc`` resource, or ``homeloc run --dask``)
the batch step becomes a Dask client: it submits every batch as one task that
calls the same per-batch function as the local pool (``batch_runner._run_one``)
on a worker, which writes the same files, so the results are byte-identical.

Before any batch is submitted every worker is checked (``client.run``): it must
import the same homeloc code, see the input files with the sizes the client
sees, read a token file the client has just written into the storage folder,
and create a file there. A worker that cannot is named in a one-line error.

Faults: a task whose worker dies is rescheduled by the Dask scheduler on
another worker (up to ``distributed.scheduler.allowed-failures`` times, 3 by
default); the batch lease (``homeloc_assets.lease``) of the dead worker is
taken over and its half-written temporaries are removed before the batch runs
again, and a batch it had finished is reused, not written again.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

from homeloc_assets import batch_runner
from homeloc_assets.catalog import BatchRef

DASK_ENV = "HOMELOC_DASK_SCHEDULER"
PROBE_PREFIX = ".homeloc-probe-"


class ClusterError(RuntimeError):
    """The Dask cluster cannot run the batches; the message is one line for the user."""


def is_scheduler_file(address: str) -> bool:
    """True when ``address`` names a scheduler file (``dask scheduler --scheduler-file``)."""
    return "://" not in address


def validate_address(address: str) -> str:
    """``address`` if it is a scheduler URL or a ``.json`` scheduler file; else ValueError."""
    if "://" in address:
        scheme, _, rest = address.partition("://")
        if scheme in ("tcp", "tls", "ws", "wss", "ucx", "inproc") and rest:
            return address
    elif address.endswith(".json"):
        return address
    raise ValueError(
        f"{DASK_ENV}={address!r}: give a scheduler address like tcp://host:8786 "
        "or a scheduler file (.json) written by `dask scheduler --scheduler-file`"
    )


def worker_wait() -> float:
    """Seconds to wait for the scheduler, then for a first worker, when none is given
    (SLURM/Kubernetes workers may still be queued): ``Settings.dask_wait``
    (``HOMELOC_DASK_WAIT``) of this process."""
    from homeloc_assets.settings import Settings

    return Settings.from_env().dask_wait


def code_digest() -> str:
    """SHA-1 of homeloc's Python sources: workers must run the code the client runs."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha1()
    for p in sorted(root.rglob("*.py")):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


def connect(address: str, timeout: float | None = None):
    """A ``distributed.Client`` on ``address`` (URL or scheduler file); ClusterError if none."""
    try:
        from distributed import Client
    except ImportError:  # pragma: no cover - dask is a dependency
        raise ClusterError("Dask scheduler given but dask[distributed] is not installed") from None
    timeout = worker_wait() if timeout is None else timeout
    try:
        if is_scheduler_file(address):
            if not Path(address).is_file():
                raise ClusterError(f"Dask scheduler file not found: {address}")
            return Client(scheduler_file=address, timeout=timeout, set_as_default=False)
        return Client(address, timeout=timeout, set_as_default=False)
    except ClusterError:
        raise
    except (OSError, TimeoutError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ClusterError(f"cannot reach the Dask scheduler at {address}: {reason}") from None


def _probe(inputs: dict[str, int], storage: str, token_name: str, token: str) -> dict:
    """Run on every worker: what of the shared filesystem this worker cannot see or write."""
    problems = []
    for path, size in inputs.items():
        try:
            seen = os.stat(path).st_size
        except OSError as exc:
            problems.append(f"cannot see the input file {path} ({exc.strerror or exc})")
            continue
        if seen != size:
            problems.append(f"sees the input file {path} with {seen} bytes, not {size}")
    token_path = Path(storage) / token_name
    try:
        if token_path.read_text() != token:
            problems.append(f"reads another token in {token_path} (a different folder at that path)")
    except OSError as exc:
        problems.append(f"cannot see the storage folder {storage} ({exc.strerror or exc})")
    else:
        mine = token_path.with_name(f"{token_name}.{secrets.token_hex(4)}")
        try:
            fd = os.open(mine, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.close(fd)
            mine.unlink()
        except OSError as exc:
            problems.append(f"cannot write into the storage folder {storage} "
                            f"({exc.strerror or exc})")
    return {"host": socket.gethostname(), "pid": os.getpid(), "code": code_digest(),
            "problems": problems}


def check_workers(client, inputs: Sequence[str], storage: str, wait: float) -> dict[str, dict]:
    """Wait for a worker, then probe all of them; ClusterError naming the first that fails."""
    address = client.scheduler.address
    try:
        client.wait_for_workers(1, timeout=wait)
    except (TimeoutError, OSError):
        raise ClusterError(
            f"no Dask worker connected to {address} within {wait:g} s "
            f"(start one with: dask worker {address} --nthreads 1)"
        ) from None
    sizes = {str(Path(p).resolve()): os.stat(p).st_size for p in inputs}
    token = secrets.token_hex(16)
    token_name = f"{PROBE_PREFIX}{token[:12]}"
    token_path = Path(storage) / token_name
    token_path.parent.mkdir(parents=True, exist_ok=True)
    token_path.write_text(token)
    try:
        replies = client.run(_probe, sizes, str(Path(storage).resolve()), token_name, token,
                             on_error="return")
    finally:
        token_path.unlink(missing_ok=True)
    mine = code_digest()
    for worker, reply in sorted(replies.items()):
        if isinstance(reply, BaseException):
            reason = str(reply).strip().splitlines()[0] if str(reply).strip() else ""
            raise ClusterError(
                f"dask worker {worker} cannot run homeloc ({type(reply).__name__}: {reason}); "
                "install homeloc on the workers or put it on their PYTHONPATH"
            )
        who = f"dask worker {worker} (host {reply['host']}, pid {reply['pid']})"
        if reply["problems"]:
            raise ClusterError(
                f"{who} {reply['problems'][0]}: the input and the storage folder must be on a "
                "filesystem shared by the workers, at the same path"
            )
        if reply["code"] != mine:
            raise ClusterError(
                f"{who} runs other homeloc code (sources {reply['code']}, here {mine}): "
                "install the same version everywhere"
            )
    return replies


_WORKER_LOCK = threading.Lock()


def run_on_worker(ref: BatchRef, setup: batch_runner.WorkerSetup, token: str) -> dict:
    """A Dask task: one batch with ``batch_runner._run_one``, the local pool's function.

    The worker's state (lookup, backend) is set up once per run (``token``).
    Batches of one worker process run one at a time: the state is not shared
    between threads (start workers with ``--nthreads 1`` and more processes).
    """
    state = batch_runner._STATE
    with _WORKER_LOCK:
        if state.get("dask_token") != token:
            old = state.get("backend")
            if old is not None:
                old.close()
            state.clear()
            batch_runner._init_worker(setup)
            state["dask_token"] = token
        # Dask reruns a finished task whose result died with its worker; the batch's files
        # are on the shared disk already, written by this run: keep them, do not rewrite
        done = batch_runner.finished_in_run(setup, ref.key, token)
        return done if done is not None else batch_runner._run_one(ref)


def _absolute(refs: Sequence[BatchRef], setup: batch_runner.WorkerSetup):
    """Paths as every worker must see them: absolute (workers have other working folders)."""
    setup = replace(setup, storage_dir=str(Path(setup.storage_dir).resolve()))
    return [replace(r, path=str(Path(r.path).resolve())) for r in refs], setup


def iter_dask(refs: Sequence[BatchRef], setup: batch_runner.WorkerSetup,
              address: str, wait: float | None = None) -> Iterator[dict]:
    """Run ``refs`` as tasks on the Dask cluster at ``address``; results as they finish."""
    from distributed import as_completed
    from distributed.scheduler import KilledWorker

    refs, setup = _absolute(refs, setup)
    wait = worker_wait() if wait is None else wait
    client = connect(address, wait)
    futures = []
    try:
        storage = setup.storage_dir
        check_workers(client, sorted({r.path for r in refs}), storage, wait)
        token = secrets.token_hex(8)
        [shared] = client.scatter([setup], broadcast=True, hash=False)
        futures = [
            client.submit(run_on_worker, r, shared, token, key=f"homeloc-{r.key}-{token}",
                          pure=False, priority=-i)
            for i, r in enumerate(refs)
        ]
        by_key = {f.key: r.key for f, r in zip(futures, refs, strict=True)}
        for fut in as_completed(futures, loop=client.loop):
            try:
                yield fut.result()
            except KilledWorker as exc:
                raise ClusterError(
                    f"batch {by_key[fut.key]}: the Dask workers running it died "
                    f"{exc.allowed_failures + 1} times (out of memory?); see the worker logs"
                ) from None
    finally:
        if futures:
            client.cancel(futures)
        client.close()
