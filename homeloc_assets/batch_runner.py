"""Run many user batches on all cores and write their partition files.

A batch is processed by ``inference.process_batch`` in a worker process; the
worker writes each of the batch's tables atomically where the IO manager keeps
that asset's partition, then its counts file last: a batch is finished exactly
when that file exists, so a killed run resumes without redoing finished
batches. No Dagster here.

A worker holds the lease ``batch_stats/.locks/<key>.lease`` (``Layout.lease_file``) (``homeloc_assets.lease``:
exclusive create plus heartbeat, safe on NFS where ``flock`` is not) while it
works on a batch: two runs of the same batch at once take turns (the second
one reuses what the first one just finished instead of writing it again), and
the holder first removes temporary files of that batch that a killed worker
(``kill -9``, or a Dask worker lost with its machine) left behind, as no live
process can still be writing them. Batches run in a local process pool, or on
a Dask cluster when a scheduler address is given (``homeloc_assets.executors``).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import pickle
import signal
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from homeloc_assets.atomic import remove_temporaries, write_text_atomic
from homeloc_assets.backends import PostgresSettings, make_backend
from homeloc_assets.catalog import BatchRef
from homeloc_assets.inference import process_batch
from homeloc_assets.inputs.reader import USERS_SCHEMA
from homeloc_assets.layout import Layout
from homeloc_assets.lease import lease
from homeloc_assets.names import BATCH_ASSETS
from homeloc_assets.tables import write_table

#: asset name -> attribute of BatchResult
BATCH_TABLES = dict(zip(BATCH_ASSETS, ("locations", "country_userdays", "homes", "rejects"),
                        strict=True))
#: columns written without Parquet dictionary encoding: nearly every value distinct (a
#: 50,000-user seed-shape batch's locations table: 57 -> 48 ms to write, 7.8 -> 7.5 MB)
TABLE_NO_DICTIONARY = ("userday_hll", "line")


@dataclass(frozen=True)
class WorkerSetup:
    """What every worker needs, pickled once per worker."""

    country_names: np.ndarray
    country_codes: np.ndarray
    lookup_pickle: bytes
    backend: str
    pg: PostgresSettings | None
    #: the storage folder (``Layout.root``): where the batch's files go
    storage_dir: str
    layers_pickle: bytes = b""  # pickled tuple of extra region layers (geo.layers)
    layer_names: tuple[str, ...] = ()
    #: inference.landscape.BatchLandscapeSpec: also write the batch's landscape tables
    #: (from the rows in memory) into the landscape cache; None: not
    landscape: object = None
    #: seconds before a batch lease of another machine is taken over (``Settings.lease_timeout``;
    #: None: this process's setting)
    lease_timeout: float | None = None

    @property
    def layout(self) -> Layout:
        """Where this setup's files go."""
        return Layout(self.storage_dir)

    @property
    def assets(self) -> list[str]:
        """Every per-batch asset this setup writes: the four tables, then two per layer."""
        return batch_assets(self.layer_names)


def batch_assets(layer_names: Sequence[str] = ()) -> list[str]:
    """The per-batch assets for the given extra layers (the four tables first)."""
    from homeloc_assets.geo.layers import layer_assets

    return [*BATCH_TABLES, *(a for n in layer_names for a in layer_assets(n))]


_STATE: dict = {}


def _die_with_parent(parent_pid: int | None) -> None:
    """Make this worker process end when the process that started it ends (even by kill -9).

    Linux: ``PR_SET_PDEATHSIG`` sends SIGKILL when the parent dies; the parent
    may have died before the call, so the parent's pid is checked after it.
    Ctrl-C reaches the whole process group: the workers ignore SIGINT and
    the parent decides (it stops them).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # started while the parent held them back: a worker must obey SIGTERM
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    if parent_pid is None:
        return
    with contextlib.suppress(OSError, AttributeError):  # not Linux: nothing to set
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


#: linux/prctl.h
PR_SET_PDEATHSIG = 1


def _init_worker(setup: WorkerSetup, parent_pid: int | None = None) -> None:
    if parent_pid is not None:
        _die_with_parent(parent_pid)
    _STATE["setup"] = setup
    _STATE["lookup"] = pickle.loads(setup.lookup_pickle)
    _STATE["layers"] = pickle.loads(setup.layers_pickle) if setup.layers_pickle else ()
    _STATE["backend"] = make_backend(setup.backend, setup.pg)


@contextlib.contextmanager
def batch_lock(layout: Layout, key: str, timeout: float | None = None) -> Iterator[bool]:
    """Hold the lease of batch ``key``; yields True when another process held it first.

    That process may have finished the batch before releasing it or dying. A
    lease left by a killed holder is taken over: at once on the same machine,
    after ``timeout`` seconds without heartbeat otherwise (default: ``Settings.lease_timeout``).
    """
    with lease(layout.lease_file(key), timeout=timeout) as held:
        yield held.waited or held.took_over is not None


def remove_stale_temporaries(layout: Layout, key: str,
                             assets: Sequence[str] = tuple(BATCH_TABLES)) -> list[Path]:
    """Delete temporary files of batch ``key`` left by a killed writer (hold its lock)."""
    targets = [layout.table(a, key) for a in assets]
    targets += [layout.stats_file(key), layout.users_file(key)]
    gone = [p for t in targets for p in remove_temporaries(t)]
    for p in layout.landscape_cache_temporaries(key):  # landscape tables
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            gone.append(p)
    return gone


class BatchError(RuntimeError):
    """An unexpected error in a batch: its type, message and where it was raised, on one line.

    Plain text, so it crosses the process boundary whatever the original error
    was (some exceptions cannot be pickled back into the parent).
    """


def where(exc: BaseException) -> str:
    """``file:line`` of the innermost frame of ``exc`` (relative to the package's folder)."""
    tb = exc.__traceback__
    if tb is None:
        return ""
    while tb.tb_next is not None:
        tb = tb.tb_next
    path = Path(tb.tb_frame.f_code.co_filename)
    root = Path(__file__).resolve().parent.parent
    with contextlib.suppress(ValueError):
        path = path.resolve().relative_to(root)
    return f"{path}:{tb.tb_lineno}"


def describe_error(exc: BaseException) -> str:
    """``Type: message (at file:line)``: a one-line account of an unexpected error."""
    text = " ".join(str(exc).split()) or "no message"
    at = where(exc)
    return f"{type(exc).__name__}: {text}" + (f" (at {at})" if at else "")


def _picklable(exc: BaseException) -> bool:
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - any failure means "cannot cross processes"
        return False
    return True


def _run_one(ref: BatchRef) -> dict:
    """One batch; its errors arrive the same in this process and in the parent of a pool."""
    from homeloc_assets.backends import BackendError
    from homeloc_assets.inputs import InputError

    try:
        return _run_locked(ref)
    except (InputError, BackendError, OSError) as exc:  # expected: their message says it all
        if _picklable(exc):
            raise
        raise BatchError(f"batch {ref.key}: {' '.join(str(exc).split())}") from None
    except Exception as exc:
        raise BatchError(f"batch {ref.key}: {describe_error(exc)}") from None


def _run_locked(ref: BatchRef) -> dict:
    setup: WorkerSetup = _STATE["setup"]
    layout = setup.layout
    with batch_lock(layout, ref.key, setup.lease_timeout) as waited:
        remove_stale_temporaries(layout, ref.key, setup.assets)
        if waited and is_finished(layout, ref.key, setup.assets):
            # another run computed this batch while we waited: same input, same result
            return {"key": ref.key, "files": _files(setup, ref.key),
                    "stats": read_stats(layout, ref.key)}
        return _compute(ref, setup)


def _files(setup: WorkerSetup, key: str) -> dict[str, str]:
    """Per asset of ``setup`` the file of batch ``key``."""
    return {a: str(setup.layout.table(a, key)) for a in setup.assets}


def finished_in_run(setup: WorkerSetup, key: str, token: str) -> dict | None:
    """The result of batch ``key`` when the run ``token`` finished it already, else None."""
    if not is_finished(setup.layout, key, setup.assets):
        return None
    stats = read_stats(setup.layout, key)
    if not stats or stats.get("run_token") != token:
        return None
    return {"key": key, "files": _files(setup, key), "stats": stats}


def _compute(ref: BatchRef, setup: WorkerSetup) -> dict:
    result = process_batch(
        ref.path,
        ref.start,
        ref.end,
        setup.country_names,
        setup.country_codes,
        _STATE["lookup"],
        _STATE["backend"],
        _STATE["layers"],
        expect=ref.expect,
        hll_params=ref.hll_params,
    )
    tables = {asset: getattr(result, attr) for asset, attr in BATCH_TABLES.items()}
    tables.update(result.layer_tables)
    layout = setup.layout
    files = {}
    for asset, table in tables.items():
        target = layout.table(asset, ref.key)
        write_table(table, target, no_dictionary=TABLE_NO_DICTIONARY)
        files[asset] = str(target)
    write_table(result.users if result.users is not None else USERS_SCHEMA.empty_table(),
                layout.users_file(ref.key))
    # the landscape tables of this batch are only ever the ones of its latest computation
    for old in layout.landscape_cache_files(ref.key):
        old.unlink(missing_ok=True)
    if setup.landscape is not None:
        from homeloc_assets.inference.landscape import NO_DICTIONARY, batch_tables

        spec = setup.landscape
        for kind, table in batch_tables(result, spec, ref.hll_params).items():
            write_table(table, layout.landscape_cache_file(ref.key, kind, spec.tag(kind)),
                        no_dictionary=NO_DICTIONARY)
    stats = dict(result.stats, key=ref.key, plan_id=ref.plan_id, index=ref.index)
    if _STATE.get("dask_token"):
        stats["run_token"] = _STATE["dask_token"]  # lets a rerun task see it was done (Dask)
    # written last: a batch is finished exactly when its stats file exists
    write_text_atomic(layout.stats_file(ref.key), json.dumps(stats, sort_keys=True))
    return {"key": ref.key, "files": files, "stats": stats}


def run_batches(
    refs: Sequence[BatchRef],
    setup: WorkerSetup,
    workers: int,
    on_done: Callable[[dict], None] | None = None,
    dask_scheduler: str | None = None,
    dask_wait: float | None = None,
) -> list[dict]:
    """Process ``refs`` on ``workers`` processes (in this process when 1), or on the Dask
    cluster at ``dask_scheduler`` when given (waiting up to ``dask_wait`` seconds for it and
    a first worker); results in input order."""
    results: list[dict] = []
    for res in _iter_results(refs, setup, workers, dask_scheduler, dask_wait):
        if on_done is not None:
            on_done(res)
        results.append(res)
    order = {r.key: i for i, r in enumerate(refs)}
    results.sort(key=lambda r: order[r["key"]])
    return results


def _iter_results(refs: Sequence[BatchRef], setup: WorkerSetup, workers: int,
                  dask_scheduler: str | None = None,
                  dask_wait: float | None = None) -> Iterator[dict]:
    if dask_scheduler and refs:
        from homeloc_assets.executors import iter_dask

        yield from iter_dask(refs, setup, dask_scheduler, dask_wait)
        return
    workers = max(1, min(workers, len(refs)))
    if workers == 1:
        _init_worker(setup)
        try:
            for ref in refs:
                yield _run_one(ref)
        finally:
            _STATE["backend"].close()
            _STATE.clear()
        return
    ctx = get_context("spawn")
    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=_init_worker,
        initargs=(setup, os.getpid()),
    )
    try:
        # Starting a worker streams its setup through a pipe while the worker
        # imports; an interrupt in the middle would leave it a truncated pickle
        # (and a traceback on stderr): signals wait until every batch is queued.
        with _signals_deferred():
            results = pool.map(_run_one, refs, chunksize=1)
        yield from results
    except BaseException:
        stop_pool(pool)  # an error or an interrupt: do not wait for the other batches
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM of this thread back until the block ends (then they arrive)."""
    sigs = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def stop_pool(pool: ProcessPoolExecutor) -> None:
    """Cancel the pending batches and end the workers at once (their writes are atomic)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        with contextlib.suppress(Exception):  # already gone
            p.terminate()
    for p in procs:
        with contextlib.suppress(Exception):
            p.join(timeout=5)


def read_stats(layout: Layout, key: str) -> dict | None:
    """The counts a worker recorded for batch ``key`` (None: not finished)."""
    path = layout.stats_file(key)
    if not path.exists():
        return None
    return json.loads(path.read_text())


def is_finished(layout: Layout, key: str, assets: Sequence[str] = tuple(BATCH_TABLES)) -> bool:
    """True when batch ``key`` has its counts file and all its tables (of ``assets``).

    A batch finished before a region layer was added lacks that layer's
    tables, so it is not finished for a run with that layer.
    """
    if not layout.stats_file(key).exists() or not layout.users_file(key).exists():
        return False
    return all(layout.table(a, key).exists() for a in assets)
