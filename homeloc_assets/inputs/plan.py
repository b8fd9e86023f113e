"""Planning user batches of a big userdays CSV grouped by user, by seeking, never reading it whole.

Owns the file-level contract of the input: header check (BOM, CRLF, column
names), fingerprint, and cutting the data part into contiguous byte ranges
``[start, end)`` that each hold whole users. A boundary is always the start of
a line whose user_guid differs from the previous (non-blank) line's, so every
user lands in exactly one batch. Reads: the header, a sample of up to 4 MB at
the start to estimate bytes per user, and a few KiB around each planned
boundary (more only while one heavy user continues).
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from homeloc_assets.inputs.errors import InputError

__all__ = [
    "COLUMNS",
    "Batch",
    "BatchPlan",
    "Layout",
    "file_fingerprint",
    "plan_batches",
    "read_header",
    "read_layout",
]

#: Required input columns, in this order.
COLUMNS = ("user_guid", "latitude", "longitude", "userday_hll")
HEADER_LINE = ",".join(COLUMNS).encode()
BOM = b"\xef\xbb\xbf"
SAMPLE_BYTES = 4 << 20
_FP_BYTES = 64 << 10
_HEADER_MAX = 64 << 10
_STEP = 8 << 10


@dataclass(frozen=True)
class Layout:
    """Where the four columns are in a file's lines: found by name in its header.

    ``fields``: number of fields per line; ``index``: the field of
    ``user_guid``, ``latitude``, ``longitude``, ``userday_hll`` (in
    :data:`COLUMNS` order); ``header``: the header line's bytes (no BOM, no
    line end), so a repeated header is recognised.
    """

    fields: int = 4
    index: tuple[int, int, int, int] = (0, 1, 2, 3)
    header: bytes = HEADER_LINE

    @property
    def guid(self) -> int:
        return self.index[0]


STANDARD = Layout()


@dataclass(frozen=True)
class Batch:
    """One batch: its position in the plan and its byte range ``[start, end)``."""

    index: int
    start: int
    end: int


@dataclass(frozen=True)
class BatchPlan:
    """How a file is cut into batches, and the identity of the file it was made for."""

    path: str
    size: int
    mtime_ns: int
    fingerprint: str
    header_end: int
    batches: list[Batch] = field(default_factory=list)
    #: params code of the file's first valid hll (``hll.params_of_code``); rows with other
    #: params are rejected, whatever the batch size; None: no valid hll found at planning
    hll_params: int | None = None

    def to_dict(self) -> dict:
        """JSON-serialisable dict (inverse of :meth:`from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> BatchPlan:
        """Plan from :meth:`to_dict` output."""
        batches = [Batch(int(b["index"]), int(b["start"]), int(b["end"])) for b in d["batches"]]
        return cls(
            str(d["path"]),
            int(d["size"]),
            int(d["mtime_ns"]),
            str(d["fingerprint"]),
            int(d["header_end"]),
            batches,
            None if d.get("hll_params") is None else int(d["hll_params"]),
        )


def file_fingerprint(path: str | Path, size: int | None = None) -> str:
    """sha1 of the size and the first and last 64 KiB, 12 hex chars: cheap change detection."""
    with open(path, "rb") as fh:
        return fingerprint_fd(fh.fileno(), size)


def fingerprint_fd(fd: int, size: int | None = None) -> str:
    """:func:`file_fingerprint` of an open file descriptor (the inode it has open, by ``pread``)."""
    if size is None:
        size = os.fstat(fd).st_size
    h = hashlib.sha1(str(size).encode())
    h.update(os.pread(fd, _FP_BYTES, 0))
    h.update(os.pread(fd, _FP_BYTES, max(0, size - _FP_BYTES)))
    return h.hexdigest()[:12]


def _looks_binary(chunk: bytes) -> bool:
    if b"\x00" in chunk:
        return True
    try:
        chunk.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def read_header(path: str | Path) -> int:
    """Check the header line; return ``header_end``, the byte offset just after it.

    Raises :class:`InputError` for an empty file, a binary/non-UTF-8 file,
    a missing or twice-named column (naming what is missing and what was found).
    """
    return read_layout(path)[0]


def read_layout(path: str | Path) -> tuple[int, Layout]:
    """``(header_end, layout)`` of ``path``: the four columns found by name.

    Names match in any case with surrounding spaces or quotes, in any order;
    other columns (e.g. a leading pandas index column with an empty name) are
    ignored. Raises :class:`InputError` like :func:`read_header`.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(_HEADER_MAX)
    except OSError as exc:
        raise InputError(f"cannot read input file {path}: {exc}") from exc
    if not head:
        raise InputError(f"{path}: empty file (expected a header line {HEADER_LINE.decode()!r})")
    if head.startswith(b"\x1f\x8b"):
        raise InputError(f"{path}: gzip-compressed; give it to `homeloc run --input` (decompressed "
                         f"once into the storage folder) or decompress it first: gunzip -k {path}")
    skip = len(BOM) if head.startswith(BOM) else 0
    nl = head.find(b"\n", skip)
    if nl < 0 and len(head) == _HEADER_MAX:
        raise InputError(
            f"{path}: no line end in the first {_HEADER_MAX} bytes; not a CSV text file"
        )
    line = head[skip : (nl if nl >= 0 else len(head))]
    # only the header line is judged: one damaged data row must not condemn the file
    if _looks_binary(line):
        raise InputError(f"{path}: not a CSV text file (the header line is binary or not UTF-8)")
    line = line.rstrip(b"\r")
    end = nl + 1 if nl >= 0 else len(head)
    if line == HEADER_LINE:
        return end, STANDARD
    text = line.decode("utf-8", errors="replace")
    found = [c.strip().strip('"').strip() for c in text.split(",")]
    low = [c.lower() for c in found]
    missing = [c for c in COLUMNS if c not in low]
    twice = [c for c in COLUMNS if low.count(c) > 1]
    if missing or twice:
        what = (f"missing column(s) {', '.join(missing)}" if missing
                else f"column(s) named twice: {', '.join(twice)}")
        raise InputError(
            f"{path}: {what}; the header must name {', '.join(COLUMNS)} (any case, any order, "
            f"other columns ignored), found: {', '.join(found)}",
            line=1,
            offset=0,
        )
    index = tuple(low.index(c) for c in COLUMNS)
    return end, Layout(len(found), index, line)  # type: ignore[arg-type]


def _first_field(line: bytes, layout: Layout = STANDARD) -> bytes:
    """The user_guid of a raw line (\r stripped)."""
    line = line.rstrip(b"\r")
    if layout.guid == 0:
        c = line.find(b",")
        return line if c < 0 else line[:c]
    parts = line.split(b",")
    return parts[layout.guid] if len(parts) > layout.guid else line


def _sort_key(line: bytes, layout: Layout = STANDARD) -> bytes | None:
    """The user_guid the reader checks the grouping of, or None for a line it rejects or skips.

    A damaged line at a planned boundary (a repeated header, an empty
    user_guid, a wrong field count, a stray CR, bad UTF-8) is transparent to
    boundary search, exactly like the reader's check ignores it.
    """
    if line.endswith(b"\r"):
        line = line[:-1]
    if line.count(b",") != layout.fields - 1 or b"\r" in line:
        return None
    if line == layout.header:
        return None
    parts = line.split(b",")
    guid = parts[layout.guid]
    if not guid or (guid.lower() == COLUMNS[0].encode() and parts[layout.index[1]].lower() == COLUMNS[1].encode()):
        return None
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return guid


def _lines_before(fh, end: int) -> int:
    """Number of \\n in bytes ``[0, end)`` of ``fh`` (for error messages only)."""
    fh.seek(0)
    n, left = 0, end
    while left > 0:
        chunk = fh.read(min(left, 16 << 20))
        if not chunk:
            break
        n += chunk.count(b"\n")
        left -= len(chunk)
    return n


class _Scanner:
    """Forward line reader from a byte offset with a counter of bytes read."""

    def __init__(self, fh, size: int, layout: Layout = STANDARD) -> None:
        self.fh = fh
        self.size = size
        self.layout = layout
        self.bytes_read = 0

    def read(self, pos: int, n: int) -> bytes:
        self.fh.seek(pos)
        data = self.fh.read(min(n, self.size - pos))
        self.bytes_read += len(data)
        return data

    def next_line_start(self, pos: int, floor: int) -> int:
        """Smallest line start >= pos (line starts: ``floor`` and bytes after a \\n)."""
        if pos <= floor:
            return floor
        p = pos - 1  # the line starts at pos if byte pos-1 is \n
        while p < self.size:
            chunk = self.read(p, _STEP)
            i = chunk.find(b"\n")
            if i >= 0:
                return p + i + 1
            p += len(chunk)
        return self.size

    def user_boundary(self, pos: int) -> tuple[int, bytes, bytes]:
        """First line start >= the line start at ``pos`` whose user differs from the line before.

        Returns ``(boundary, guid_before, guid_after)``; blank lines are
        transparent. ``boundary == size`` when the user runs to EOF.
        """
        guid: bytes | None = None
        p = pos
        buf = b""
        buf_at = pos
        while True:
            if p >= self.size:
                return self.size, guid or b"", b""
            rel = p - buf_at
            nl = buf.find(b"\n", rel)
            if nl < 0:
                if buf_at + len(buf) >= self.size:
                    line = buf[rel:]
                    nxt = self.size
                else:
                    more = self.read(buf_at + len(buf), max(_STEP, len(buf)))
                    buf = buf[rel:] + more
                    buf_at = p
                    continue
            else:
                line = buf[rel:nl]
                nxt = buf_at + nl + 1
            g = _sort_key(line, self.layout) if line.strip(b"\r \t") else None
            if g is not None:
                if guid is None:
                    guid = g
                elif g != guid:
                    return p, guid, g
            p = nxt


def _file_hll_params(sc: _Scanner, header_end: int, sample: bytes) -> int | None:
    """Params code of the file's first valid hll: from the sample, else the next blocks (64 MB at most)."""
    from homeloc_assets.inputs.reader import first_hll_params

    pos, block = header_end, sample
    while block:
        cut = block.rfind(b"\n") + 1 if pos + len(block) < sc.size else len(block)
        found = first_hll_params(block[:cut] if cut else block, sc.layout)
        if found is not None or pos + len(block) >= sc.size or pos - header_end > (64 << 20):
            return found
        pos += cut or len(block)
        block = sc.read(pos, SAMPLE_BYTES)
    return None


def plan_batches(path: str | Path, batch_users: int = 50_000) -> BatchPlan:
    """Cut ``path`` into batches of about ``batch_users`` users by seeking (well under 1 s).

    Bytes per user come from a sample of up to 4 MB after the header; each
    target offset is moved forward to the next line whose user_guid differs
    from the previous line's. Batches are contiguous, cover ``[header_end,
    size)`` and never cut through a run of one user's rows; users may come in
    any order (whether a user's rows are all together is checked exactly by
    the batches, see :mod:`homeloc_assets.inputs.grouping`). Raises
    :class:`InputError` for an empty file, a header-only file or a bad header.
    """
    if batch_users < 1:
        raise ValueError(f"batch_users must be >= 1, got {batch_users}")
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise InputError(f"cannot read input file {path}: {exc}") from exc
    header_end, layout = read_layout(path)
    size = st.st_size
    with open(path, "rb") as fh:
        sc = _Scanner(fh, size, layout)
        sample = sc.read(header_end, SAMPLE_BYTES)
        if not sample.strip(b"\r\n \t"):
            raise InputError(f"{path}: no data rows after the header")
        # bytes per user from the complete lines of the sample
        cut = sample.rfind(b"\n") + 1 if header_end + len(sample) < size else len(sample)
        body = sample[:cut] if cut > 0 else sample
        guids = [_first_field(ln, layout) for ln in body.split(b"\n") if ln.strip(b"\r \t")]
        changes = sum(1 for a, b in zip(guids, guids[1:], strict=False) if a != b)
        users = changes + 1
        bytes_per_user = max(1.0, len(body) / users)
        target = max(1, int(bytes_per_user * batch_users))
        data = size - header_end
        n_target = max(1, math.ceil(data / target))
        bounds = [header_end]
        for k in range(1, n_target):
            off = header_end + k * target
            if off <= bounds[-1]:
                continue
            ls = sc.next_line_start(off, header_end)
            if ls >= size:
                break
            b, before, after = sc.user_boundary(ls)
            if b >= size:
                break
            if b > bounds[-1]:
                bounds.append(b)
        bounds.append(size)
        hll_params = _file_hll_params(sc, header_end, sample)
        bytes_read = sc.bytes_read
    batches = [Batch(i, s, e) for i, (s, e) in enumerate(zip(bounds[:-1], bounds[1:], strict=True))]
    plan = BatchPlan(
        path=str(path.resolve()),
        size=size,
        mtime_ns=st.st_mtime_ns,
        fingerprint=file_fingerprint(path, size),
        header_end=header_end,
        batches=batches,
        hll_params=hll_params,
    )
    plan_batches.last_bytes_read = bytes_read  # type: ignore[attr-defined]  # for tests
    return plan
