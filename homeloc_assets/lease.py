"""Exclusive leases on a shared filesystem (NFS, Lustre, GPFS, CephFS) without ``flock``.

``flock`` is not a safe batch lock once workers on several machines share the
storage folder: on NFS it is emulated with byte-range locks (or stays local to
one client, depending on the mount), and a lock held by a machine that died
lingers until the server's grace period. A lease is a plain file instead:

* **take**: ``open(<name>.lease, O_CREAT | O_EXCL)`` — exclusive create is
  atomic on NFSv3/v4 and on cluster filesystems — then write the holder's
  host, pid, process start time and a random token into it;
* **hold**: a thread touches the file's mtime every ``heartbeat`` seconds;
* **release**: remove the file, only if it still carries our token;
* **stale**: a lease whose holder runs on this host and is gone (pid dead, or
  the pid now belongs to a process started at another time) is stale at once;
  any other lease is stale when a waiter has seen neither its mtime nor its
  token change for ``timeout`` seconds of the waiter's own monotonic clock (so
  clocks of different machines never get compared). The file is opened, not
  just stat'ed, before each look, so NFS close-to-open consistency gives fresh
  attributes instead of cached ones;
* **take over**: under a short-lived breaker file (``<name>.lease.break``,
  itself ``O_EXCL``), the waiter checks the lease still carries the stale
  token, moves it away by an atomic ``rename`` to a name of its own, checks
  that what it moved is the stale lease (else puts it back with ``link``,
  which never overwrites), deletes it, and then takes the lease by exclusive
  create like anybody else.

A holder whose lease was taken over (it stalled for longer than ``timeout``)
sees it at its next heartbeat: ``Lease.lost`` becomes True and
``Lease.check()`` raises, so it can stop before committing. No Dagster here.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


class LeaseLost(RuntimeError):
    """Our lease was taken over by another process (we stalled past the timeout)."""


def default_timeout() -> float:
    """Seconds without a heartbeat before a lease of another machine counts as stale when
    none is given: ``Settings.lease_timeout`` (``HOMELOC_LEASE_TIMEOUT``) of this process."""
    from homeloc_assets.settings import Settings

    return Settings.from_env().lease_timeout


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name (Linux), None when gone or unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its last ')'
    return stat.rpartition(")")[2].split()


def _start_time(pid: int) -> str | None:
    """Start time of ``pid`` in clock ticks since boot (Linux), None when unknown or gone."""
    fields = _proc_stat(pid)
    return fields[19] if fields else None


def process_alive(pid: int, start: str | None) -> bool:
    """True when process ``pid`` of this host runs and is the one started at ``start``.

    A zombie (killed, not yet reaped by its parent) is not alive.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's
    fields = _proc_stat(pid)
    if fields is None:
        return True  # no /proc: trust kill(0)
    if fields[0] in ("Z", "X"):
        return False
    return start is None or fields[19] == start


def node_id() -> str:
    """This machine and pid namespace: pids compare only within one (containers share hostnames)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        pidns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return socket.gethostname()
    return f"{boot}:{pidns}"


@dataclass(frozen=True)
class Holder:
    """Who holds a lease, as written in its file."""

    host: str
    node: str
    pid: int
    start: str | None
    token: str

    def describe(self) -> str:
        """``host:pid`` for messages."""
        return f"{self.host}:{self.pid}"


def read_holder(path: str | os.PathLike[str]) -> tuple[Holder | None, int] | None:
    """``(holder, mtime_ns)`` of lease file ``path``; None when there is no such file.

    The holder is None while the file is being written (or when it is damaged):
    such a file is judged by its mtime alone.
    """
    try:
        with open(path, "rb") as fh:  # open, not stat: close-to-open gives fresh attributes
            mtime = os.fstat(fh.fileno()).st_mtime_ns
            raw = fh.read()
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(raw)
        holder = Holder(str(doc["host"]), str(doc["node"]), int(doc["pid"]), doc.get("start"),
                        str(doc["token"]))
    except (ValueError, KeyError, TypeError):
        holder = None
    return holder, mtime


def _token(cur: tuple[Holder | None, int] | None) -> str | None:
    return cur[0].token if cur is not None and cur[0] is not None else None


class Lease:
    """An exclusive lease on ``path`` (see the module docstring); use ``lease(...)``."""

    def __init__(self, path: str | os.PathLike[str], timeout: float | None = None,
                 heartbeat: float | None = None, poll: float = 0.05) -> None:
        self.path = Path(path)
        self.timeout = default_timeout() if timeout is None else float(timeout)
        self.heartbeat = heartbeat if heartbeat is not None else max(self.timeout / 6, 0.01)
        self.poll = poll
        self.host = socket.gethostname()
        self.node = node_id()
        self.token = secrets.token_hex(16)
        self.waited = False  #: a live holder had it and we waited for its release
        self.took_over: Holder | None = None  #: the stale holder we replaced, if any
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- take
    def _try_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        pid = os.getpid()
        doc = {"host": self.host, "node": self.node, "pid": pid, "start": _start_time(pid), "token": self.token,
               "since": time.time()}
        try:
            os.write(fd, json.dumps(doc).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return True

    def acquire(self) -> Lease:
        """Wait until the lease is ours (taking over a stale one); returns self."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        seen: tuple | None = None  # (token, mtime) last seen, and since when (monotonic)
        seen_since = 0.0
        delay = self.poll
        while not self._try_create():
            cur = read_holder(self.path)
            if cur is None:
                continue  # released between our create and our look: try again at once
            holder, mtime = cur
            ident = (_token(cur), mtime)
            now = time.monotonic()
            if ident != seen:
                seen, seen_since = ident, now
            stale = holder is not None and holder.node == self.node and not process_alive(
                holder.pid, holder.start)
            stale = stale or now - seen_since >= self.timeout
            if stale and self._take_over(holder):
                self.took_over = holder
                seen = None
                continue
            if not stale and holder is not None:
                self.waited = True
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0, self.timeout / 4)
        self._thread = threading.Thread(target=self._beat, name=f"lease {self.path.name}",
                                        daemon=True)
        self._thread.start()
        return self

    def _take_over(self, stale: Holder | None) -> bool:
        """Remove the stale lease ``stale`` (None: a file without a holder); True when gone."""
        breaker = self.path.with_name(self.path.name + ".break")
        try:
            fd = os.open(breaker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            self._clear_stale_breaker(breaker)
            return False
        os.close(fd)
        try:
            want = stale.token if stale is not None else None
            cur = read_holder(self.path)
            if cur is None:
                return True  # released meanwhile
            if _token(cur) != want:
                return False  # a new holder came: not stale any more
            moved = self.path.with_name(f"{self.path.name}.stale-{self.token}")
            try:
                os.rename(self.path, moved)
            except FileNotFoundError:
                return True
            if _token(read_holder(moved)) != want:
                # a fresh lease slipped in between our look and the rename: give it back
                with contextlib.suppress(FileExistsError):
                    os.link(moved, self.path)
                moved.unlink(missing_ok=True)
                return False
            moved.unlink(missing_ok=True)
            return True
        finally:
            breaker.unlink(missing_ok=True)

    def _clear_stale_breaker(self, breaker: Path) -> None:
        """Remove a breaker file left by a waiter that died while taking over."""
        try:
            age = time.time() - breaker.stat().st_mtime
        except FileNotFoundError:
            return
        # breakers live for milliseconds; the mtime comparison only needs to be rough here
        if age > self.timeout:
            breaker.unlink(missing_ok=True)

    # ---------------------------------------------------------------- hold
    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            if _token(read_holder(self.path)) != self.token:
                self.lost = True
                return
            with contextlib.suppress(FileNotFoundError):
                os.utime(self.path)

    def check(self) -> None:
        """Raise ``LeaseLost`` when another process has taken the lease over."""
        if self.lost or _token(read_holder(self.path)) != self.token:
            self.lost = True
            raise LeaseLost(f"lease {self.path} was taken over by another process "
                            f"(this one stalled for more than {self.timeout:g} s)")

    def release(self) -> None:
        """Stop the heartbeat and remove the lease file if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if _token(read_holder(self.path)) != self.token:
            return  # taken over while we stalled: the file is somebody else's now
        gone = self.path.with_name(f"{self.path.name}.released-{self.token}")
        try:
            os.rename(self.path, gone)
        except FileNotFoundError:
            return
        if _token(read_holder(gone)) != self.token:  # taken over in between: give it back
            with contextlib.suppress(FileExistsError):
                os.link(gone, self.path)
        gone.unlink(missing_ok=True)


@contextlib.contextmanager
def lease(path: str | os.PathLike[str], timeout: float | None = None,
          heartbeat: float | None = None) -> Iterator[Lease]:
    """Hold the lease ``path`` for the ``with`` block (see ``Lease``)."""
    held = Lease(path, timeout=timeout, heartbeat=heartbeat).acquire()
    try:
        yield held
    finally:
        held.release()
