"""Figures drawn once per content: a cache keyed by everything a figure is drawn from.

A figure is a pure function of its drawing code and its arguments, and drawing
one and rendering its PNG and SVG costs 0.3-2.5 s (the six figures of a run were
more than half of a second run on the 20k sample). A rerun on the same data, a
fresh output folder for the same input, or new thresholds that leave a figure's
inputs alone copy the files from the cache instead of drawing them again.

The key (:func:`figure_key`) is a SHA-256 over the drawing function (its module's
source, its name), ``plots.py``'s source, matplotlib's version, the resolution,
the figure's file name and every argument's content (:func:`digest`): frames by
their values (geometries as WKB), arrays by their bytes, functions by their code
and closures. An argument of a type :func:`digest` does not know makes the
figure uncached (drawn every time), never wrong. Entries are written atomically
with each file's SHA-256 and checked before reuse; a damaged entry or any error
of the cache falls back to drawing. The cache is content-addressed, so output
folders and concurrent runs can share it. No Dagster.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import inspect
import json
import os
import shutil
import sys
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np

from homeloc_assets.atomic import write_bytes_atomic, write_text_atomic

__all__ = ["Uncacheable", "digest", "figure_key", "cached_figure_files", "cached_derived"]

#: bump when the entry layout changes
FORMAT_VERSION = 1
#: entries kept (the least recently used beyond this are removed when one is added)
MAX_ENTRIES = 64
_META = "meta.json"
_FORMATS = ("png", "svg")
#: folder of :func:`cached_derived`'s entries inside the figure cache
_DERIVED = "derived"


class Uncacheable(TypeError):
    """An argument whose content :func:`digest` cannot vouch for."""


def _update_code(h, code: types.CodeType) -> None:
    h.update(code.co_code)
    h.update(repr(code.co_names).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _update_code(h, const)
        else:
            h.update(repr(const).encode())


def digest(obj, h=None):
    """Feed ``obj``'s content to the hash ``h`` (SHA-256 when None) and return ``h``.

    Knows None, numbers, strings, bytes, tuples, lists, dicts, dataclass
    instances, numpy arrays, pandas (and geopandas) frames and series, pyarrow
    tables and arrays, and plain functions; raises :class:`Uncacheable` for anything else.
    """
    import pandas as pd
    import pyarrow as pa

    h = hashlib.sha256() if h is None else h
    tag = type(obj).__name__.encode()
    h.update(b"<" + tag + b">")
    if obj is None or isinstance(obj, (bool, int, float, complex, str, np.generic)):
        h.update(repr(obj).encode())
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        h.update(len(obj).to_bytes(8, "little"))
        h.update(obj)
    elif isinstance(obj, (tuple, list)):
        h.update(len(obj).to_bytes(8, "little"))
        for item in obj:
            digest(item, h)
    elif isinstance(obj, dict):
        h.update(len(obj).to_bytes(8, "little"))
        for key in sorted(obj, key=repr):
            digest(key, h)
            digest(obj[key], h)
    elif isinstance(obj, np.ndarray):
        if obj.dtype == object:
            digest(obj.tolist(), h)
        else:
            h.update(f"{obj.dtype.str}{obj.shape}".encode())
            h.update(np.ascontiguousarray(obj).tobytes())
    elif isinstance(obj, pd.DataFrame):
        digest([str(c) for c in obj.columns], h)
        digest(obj.index.to_series(), h)
        for col in obj.columns:
            digest(obj[col], h)
    elif isinstance(obj, pd.Series):
        _digest_series(obj, h)
    elif isinstance(obj, (pa.Table, pa.RecordBatch)):
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, obj.schema) as writer:
            writer.write(obj)
        h.update(sink.getvalue().to_pybytes())
    elif isinstance(obj, (pa.Array, pa.ChunkedArray)):
        digest(pa.table({"a": obj}), h)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        h.update(type(obj).__qualname__.encode())
        digest([(f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj)], h)
    elif isinstance(obj, types.FunctionType):
        h.update(f"{obj.__module__}.{obj.__qualname__}".encode())
        _update_code(h, obj.__code__)
        digest(obj.__defaults__, h)
        digest([c.cell_contents for c in obj.__closure__ or ()], h)
    else:
        raise Uncacheable(f"no content digest for {type(obj).__module__}.{type(obj).__name__}")
    return h


def _digest_series(s, h) -> None:
    import pandas as pd

    h.update(f"{s.name!r}{s.dtype}{len(s)}".encode())
    if str(s.dtype) == "geometry":
        import shapely

        wkb = shapely.to_wkb(np.asarray(s.array, dtype=object))
        h.update(b"".join(w if w is not None else b"\0" for w in wkb))
        digest(str(getattr(s, "crs", None)), h)
        digest(s.index.to_series(), h)
        return
    h.update(pd.util.hash_pandas_object(s, index=True).to_numpy().tobytes())


def _source_bytes(module_name: str) -> bytes:
    module = sys.modules.get(module_name)
    path = inspect.getsourcefile(module) if module is not None else None
    if not path:
        raise Uncacheable(f"no source for module {module_name}")
    return Path(path).read_bytes()


def figure_key(draw: Callable, args: tuple, kwargs: dict, name: str, dpi: int) -> str:
    """The cache key of ``draw(*args, **kwargs)`` saved as ``name`` at ``dpi`` (hex SHA-256)."""
    import matplotlib

    if not isinstance(draw, types.FunctionType):
        raise Uncacheable(f"draw must be a plain function, not {type(draw).__name__}")
    h = hashlib.sha256(f"homeloc-figure-{FORMAT_VERSION}|{matplotlib.__version__}|{dpi}|{name}"
                       .encode())
    h.update(_source_bytes(draw.__module__))
    h.update(_source_bytes("homeloc_assets.plots"))
    digest(draw, h)
    digest(list(args), h)
    digest(dict(kwargs), h)
    return h.hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_entry(entry: Path, files: dict[str, str], **meta) -> dict[str, bytes] | None:
    """The bytes of entry ``entry``'s ``files`` (key -> file name) when its metadata has
    ``meta`` and every file's SHA-256 matches (each read once), else None; a whole entry
    becomes the most recently used."""
    meta_file = entry / _META
    try:
        stored = json.loads(meta_file.read_text())
        if any(stored.get(k) != v for k, v in meta.items()):
            return None
        data = {k: (entry / f).read_bytes() for k, f in files.items()}
        if any(_sha256(data[k]) != stored["sha256"][k] for k in files):
            return None
        os.utime(meta_file)
        return data
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_entry(cache_dir: Path, entry: Path, files: dict[str, tuple[str, bytes]],
                 **meta) -> None:
    """Add entry ``entry`` with ``files`` (key -> (file name, bytes)) and ``meta``; the
    metadata is written last, so a half-written entry is never read as whole."""
    entry.mkdir(parents=True, exist_ok=True)
    for name, data in files.values():
        write_bytes_atomic(entry / name, data)
    sums = {k: _sha256(data) for k, (_, data) in files.items()}
    write_text_atomic(entry / _META, json.dumps({**meta, "sha256": sums}))
    _prune(cache_dir)


def _lookup(entry: Path, name: str, out_dir: Path) -> dict[str, Path] | None:
    """Copy entry ``entry``'s files to ``out_dir`` when they are whole."""
    data = _read_entry(entry, {fmt: f"{name}.{fmt}" for fmt in _FORMATS}, name=name)
    if data is None:
        return None
    paths = {}
    try:
        for fmt in _FORMATS:
            # a copy, not a hard link: a file changed in place on one side (an image editor
            # saving over it) must not change the other
            paths[fmt] = out_dir / f"{name}.{fmt}"
            write_bytes_atomic(paths[fmt], data[fmt])
    except OSError:
        return None
    return paths


def _store(cache_dir: Path, entry: Path, name: str, paths: dict[str, Path]) -> None:
    """Add the saved figure files ``paths`` as entry ``entry``."""
    _write_entry(cache_dir, entry, {fmt: (f"{name}.{fmt}", paths[fmt].read_bytes())
                                    for fmt in _FORMATS}, name=name)


def _prune(cache_dir: Path) -> None:
    """Remove the least recently used entries beyond :data:`MAX_ENTRIES`."""
    metas = []
    for meta in cache_dir.glob(f"*/*/{_META}"):
        try:
            metas.append((meta.stat().st_mtime_ns, meta))
        except OSError:
            continue
    metas.sort(reverse=True)
    for _, meta in metas[MAX_ENTRIES:]:
        shutil.rmtree(meta.parent, ignore_errors=True)


def cached_figure_files(draw: Callable, args: tuple = (), kwargs: dict | None = None, *,
                        name: str, out_dir: str | os.PathLike[str],
                        cache_dir: str | os.PathLike[str] | None,
                        dpi: int | None = None) -> tuple[dict[str, Path], bool]:
    """``<out_dir>/<name>.png`` and ``.svg`` of ``draw(*args, **kwargs)``: from the cache
    in ``cache_dir`` when an entry for the same key is there, else drawn, saved
    (:func:`homeloc_assets.plots.save_figure`) and added. Returns the paths and
    whether they came from the cache. ``cache_dir=None`` always draws.
    """
    from homeloc_assets import plots

    kwargs = dict(kwargs or {})
    dpi = plots.SAVE_DPI if dpi is None else dpi
    out_dir = Path(out_dir)
    entry = None
    if cache_dir is not None:
        try:
            key = figure_key(draw, tuple(args), kwargs, name, dpi)
            entry = Path(cache_dir) / key[:2] / key
            out_dir.mkdir(parents=True, exist_ok=True)
            hit = _lookup(entry, name, out_dir)
            if hit is not None:
                return hit, True
        except (Uncacheable, OSError):
            entry = None
    paths = plots.save_figure(draw(*args, **kwargs), out_dir, name, dpi=dpi)
    if entry is not None:
        # a full or read-only cache costs the next run a drawing, nothing else
        with contextlib.suppress(OSError):
            _store(Path(cache_dir), entry, name, paths)
    return paths, False


def cached_derived(make: Callable[[Path], bytes], source: str | os.PathLike[str],
                   cache_dir: str | os.PathLike[str] | None,
                   depends: tuple[str, ...] = ()) -> bytes:
    """``make(source)`` (bytes made from a file, e.g. a figure's scaled UI copy), from the
    cache when ``make`` made it from a file with the same bytes before.

    Keyed by the source file's content, ``make``'s code and its module's source,
    and the source and ``__version__`` of every module named in ``depends`` (what
    ``make`` calls); checked by SHA-256 before reuse; any cache error makes it
    afresh. ``cache_dir=None`` always makes it.
    """
    source = Path(source)
    if cache_dir is None:
        return make(source)
    root = Path(cache_dir) / _DERIVED
    try:
        if not isinstance(make, types.FunctionType):
            raise Uncacheable(f"make must be a plain function, not {type(make).__name__}")
        h = hashlib.sha256(f"homeloc-derived-{FORMAT_VERSION}".encode())
        h.update(_source_bytes(make.__module__))
        for name in depends:
            try:
                module = importlib.import_module(name)
            except ImportError as e:
                raise Uncacheable(f"cannot import {name}") from e
            h.update(f"{name}|{getattr(module, '__version__', '')}".encode())
            h.update(_source_bytes(name))
        digest(make, h)
        h.update(hashlib.sha256(source.read_bytes()).digest())
        key = h.hexdigest()
    except (Uncacheable, OSError):
        return make(source)
    entry = root / key[:2] / key
    hit = _read_entry(entry, {"data": "data"})
    if hit is not None:
        return hit["data"]
    data = make(source)
    with contextlib.suppress(OSError):
        _write_entry(root, entry, {"data": ("data", data)})
    return data
