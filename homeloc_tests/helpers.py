"""Helpers shared by the test modules (no tests here; test modules import from here only).

* ``homeloc(...)``: the command line in a subprocess, without ``DAGSTER_HOME``;
* ``days(...)``: an hll of day numbers; inputs: ``base_rows``, ``write_lines``,
  ``write`` (reader tests), ``write_csv`` (sensor tests), ``H1``/``H2``;
* what a run leaves: ``export_files``, ``stray_files``, ``batch_stats_mtimes``,
  ``one_error_line``;
* the pipeline in this process: ``registered`` (definitions and an instance with the
  batches), ``materialize`` (must succeed), ``materialized`` (metadata per asset).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from homeloc_assets import hll

#: the ``homeloc`` command of this interpreter
HOMELOC = [sys.executable, "-m", "homeloc_assets.cli"]
#: the input header (bytes: the robustness tests build files from byte lines)
HEADER = b"user_guid,latitude,longitude,userday_hll"
#: the export files of a successful run
EXPORTS = (
    "user_home_locations.csv",
    "user_classification.csv",
    "user_country_userdays.parquet",
    "user_home_locations.parquet",
    "rejected_rows.csv",
    "summary.json",
)


# ------------------------------------------------------------------ the command
def env_for(extra: dict | None = None) -> dict:
    """This environment without ``DAGSTER_HOME`` (a run makes its own), plus ``extra``."""
    e = dict(os.environ)
    e.pop("DAGSTER_HOME", None)
    e.update(extra or {})
    return e


def homeloc(*args: str, env: dict | None = None, check: bool = True, timeout: float = 600,
            stdin: str | None = None) -> subprocess.CompletedProcess:
    """``homeloc ARGS`` in a subprocess; fails the test (with stderr) when ``check`` and rc != 0."""
    res = subprocess.run([*HOMELOC, *args], input=stdin, capture_output=True, text=True,
                         env=env_for(env), timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"homeloc {' '.join(args)} failed ({res.returncode}):\n{res.stderr}")
    return res


def run_args(src: Path, out: Path, *extra: str) -> list[str]:
    """``run`` on ``src`` into ``out`` with one worker, quiet."""
    return ["run", "--input", str(src), "--out", str(out), "--workers", "1", "--quiet", *extra]


def one_error_line(res: subprocess.CompletedProcess) -> str:
    """The run's error: one ``homeloc: error:`` line, and it is the last line of stderr."""
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert lines, "no error message"
    errors = [ln for ln in lines if ln.startswith("homeloc: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    return errors[0]


# ------------------------------------------------------------------ what a run leaves
def export_files(out: Path) -> dict[str, bytes]:
    """Every visible file directly in ``out`` (name -> bytes)."""
    if not out.exists():
        return {}
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def stray_files(out: Path) -> list[str]:
    """Temporary / partial files anywhere under ``out`` (outside Dagster's own storage)."""
    bad = []
    for p in out.rglob("*"):
        if "dagster_home" in p.parts or not p.is_file():
            continue
        if p.name.startswith(".") or p.suffix in (".tmp", ".staged", ".partial"):
            bad.append(str(p.relative_to(out)))
    return bad


def batch_stats_mtimes(out: Path) -> dict[str, int]:
    """mtime (ns) of each finished batch's stats file under ``out``'s default storage."""
    d = out / ".homeloc" / "batch_stats"
    return {p.name: p.stat().st_mtime_ns for p in d.glob("*.json")} if d.exists() else {}


# ------------------------------------------------------------------ hlls
def days(*ds: int, params: tuple[int, int, int, int] = (11, 5, -1, 1)) -> bytes:
    """An hll holding the given day numbers (EXPLICIT at the default settings)."""
    h = hll.empty(*params)
    for d in ds:
        h = hll.add(h, hll.hash_bigint(d))
    return h


def days_hex(*ds: int) -> str:
    """:func:`days` as bytea hex text."""
    return hll.to_hex(days(*ds))


def explicit_hex(*values: int, b1: int = 0x8B, b2: int = 0x7F) -> str:
    """EXPLICIT hll (type 2, version 1) with sorted signed int64 values, as bytea hex text."""
    body = "".join(f"{v & 0xFFFFFFFFFFFFFFFF:016x}" for v in sorted(values))
    return f"\\x12{b1:02x}{b2:02x}{body}"


H1 = explicit_hex(1, 2)
H2 = explicit_hex(-5, 7, 9)
H_OTHER_PARAMS = explicit_hex(3, b1=0x8C)  # log2m 12 instead of 11


# ------------------------------------------------------------------ input files
def base_rows(n_users: int, seed: int, tmp: Path) -> tuple[bytes, list[bytes]]:
    """(header, data lines without line ends) of a synthetic file."""
    from homeloc_assets.synth import generate

    p = tmp / f"synth-{n_users}-{seed}.csv"
    generate(n_users, p, seed=seed)
    lines = p.read_bytes().split(b"\n")
    assert lines[0] == HEADER and lines[-1] == b""
    return lines[0], lines[1:-1]


def replicate(lines: list[bytes], copies: int) -> list[bytes]:
    """``copies`` disjoint copies of the users (guid prefixed by a letter): still sorted."""
    out = []
    for k in range(copies):
        prefix = bytes([ord("a") + k])
        out.extend(prefix + ln for ln in lines)
    return out


def write_lines(path: Path, lines: list[bytes], header: bytes = HEADER) -> Path:
    """``header`` and ``lines``, one per line."""
    path.write_bytes(b"\n".join([header, *lines]) + b"\n")
    return path


def write(tmp_path, lines, name="in.csv", newline="\n", bom=False, header=True) -> str:
    """Text ``lines`` (with the header unless ``header=False``) as ``tmp_path/name``."""
    text = newline.join(([HEADER.decode()] if header else []) + lines) + newline
    data = text.encode()
    if bom:
        data = b"\xef\xbb\xbf" + data
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


#: one EXPLICIT hll for the sensor tests' files
SENSOR_HLL = r"\x128b7fb864f58a7c9c7b22c55fbdadd4c9c52911534ef0e7e557f021d42cf35cc94201"


def set_age(path: Path, age: float) -> None:
    """Set ``path``'s mtime ``age`` seconds into the past."""
    t = time.time() - age
    os.utime(path, (t, t), follow_symlinks=False)


def write_csv(path: Path, users: int, start: int = 0, rows_per_user: int = 2,
              age: float = 3600) -> Path:
    """A sorted userdays CSV of ``users`` users; mtime ``age`` seconds in the past."""
    lines = [HEADER.decode() + "\n"]
    for u in range(start, start + users):
        lines += [f"{u:032x},52.5{r},13.4{r},{SENSOR_HLL}\n" for r in range(rows_per_user)]
    path.write_text("".join(lines))
    set_age(path, age)
    return path


# ------------------------------------------------------------ the pipeline in this process
def registered(settings, csv: Path | None = None, keys=None, instance=None) -> tuple:
    """``(defs, instance, keys)``: the definitions of ``settings`` and an instance (ephemeral
    unless given) with the batches of ``csv`` (planned into the catalog now) or ``keys`` as
    ``user_batches`` partitions. Dagster is imported here only: core tests never import it."""
    import dagster as dg

    from homeloc_assets.catalog import Catalog
    from homeloc_assets.definitions import build_definitions
    from homeloc_assets.defs.batches import user_batches

    defs = build_definitions(settings)
    instance = instance or dg.DagsterInstance.ephemeral()
    if csv is not None:
        _, keys = Catalog(settings.storage_path).register(csv, settings.batch_users)
    instance.add_dynamic_partitions(user_batches.name, list(keys))
    return defs, instance, keys


def materialize(defs, instance, selection, **kw):
    """``dg.materialize`` of ``selection`` with the assets and resources of ``defs``; asserts
    that it succeeded and returns its result."""
    import dagster as dg

    res = dg.materialize(defs.assets, selection=selection, instance=instance,
                         resources=defs.resources, **kw)
    assert res.success
    return res


def materialized(res) -> dict:
    """The metadata of every asset a ``materialize`` result materialised, by asset name."""
    return {e.asset_key.to_user_string(): e.materialization.metadata
            for e in res.get_asset_materialization_events()}
