"""Files in the shapes real hlldb exports have, made by PostgreSQL itself.

43-character base64 ids (mixed case, ``+``, ``/``) ordered by a linguistic
collation (grouped by user, not in byte order), psql's text-format COPY
(``\\\\x`` doubled), bare hex (what ``encode(h::bytea, 'hex')`` writes in hlldb); each must give
the same homes as the byte-ordered file. A user whose rows are not together is
the one structural error: exit 2, two line numbers, nothing published.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from homeloc_tests import helpers


def homeloc(*args: str) -> subprocess.CompletedProcess:
    return helpers.homeloc(*args, check=False)


def _b64(guid: str) -> str:
    return base64.b64encode(hashlib.sha256(guid.encode()).digest()).decode().rstrip("=")


@pytest.fixture(scope="module")
def exports(pg_dsn, small_input, tmp_path_factory):
    """The small input with base64 ids, exported by PostgreSQL in three ways."""
    import psycopg2

    d = tmp_path_factory.mktemp("exports")
    df = pd.read_csv(small_input)
    df["user_guid"] = df.user_guid.map(_b64)
    assert df.user_guid.str.len().eq(43).all() and df.user_guid.str.contains("[+/]").any()
    byte_order = d / "byte_order.csv"
    df.sort_values("user_guid", kind="stable").to_csv(byte_order, index=False)
    conn = psycopg2.connect(pg_dsn)
    conn.autocommit = True
    files = {"byte_order": byte_order}
    with conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE ud (n serial, user_guid text, latitude float8, "
                    "longitude float8, userday_hll hll)")
        buf = io.StringIO()
        df.to_csv(buf, index=False, header=False)
        buf.seek(0)
        cur.copy_expert("COPY ud (user_guid, latitude, longitude, userday_hll) FROM STDIN "
                        "WITH (FORMAT csv)", buf)
        order = 'ORDER BY user_guid COLLATE "en-US-x-icu", n'
        for name, sql, opts in [
            ("collation_csv", f"SELECT user_guid, latitude, longitude, userday_hll FROM ud {order}",
             "FORMAT csv, HEADER"),
            ("psql_text", f"SELECT user_guid, latitude, longitude, userday_hll FROM ud {order}",
             "DELIMITER ','"),
            ("bare_hex", "SELECT user_guid, latitude, longitude, substr(userday_hll::text, 3) AS userday_hll "
                         f"FROM ud {order}", "FORMAT csv, HEADER"),
        ]:
            out = io.StringIO()
            cur.copy_expert(f"COPY ({sql}) TO STDOUT WITH ({opts})", out)
            text = out.getvalue()
            if "HEADER" not in opts:  # psql's text format has no header line: a user adds one
                text = "user_guid,latitude,longitude,userday_hll\n" + text
            files[name] = d / f"{name}.csv"
            files[name].write_text(text)
    conn.close()
    return files


def _homes(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "user_home_locations.csv").sort_values("user_guid").reset_index(drop=True)


@pytest.mark.slow
def test_database_exports_give_the_byte_order_files_homes(exports, tmp_path):
    ids = pd.read_csv(exports["collation_csv"]).user_guid
    assert not ids.is_monotonic_increasing  # the collation is not byte order...
    assert (ids != ids.shift()).sum() == ids.nunique()  # ...but users are grouped
    assert "\\\\x" in exports["psql_text"].read_text()[:400]
    ref = tmp_path / "ref"
    r = homeloc("run", "--input", str(exports["byte_order"]), "--out", str(ref), "--no-figures",
                "--quiet")
    assert r.returncode == 0, r.stderr
    for name in ("collation_csv", "psql_text", "bare_hex"):
        out = tmp_path / name
        r = homeloc("run", "--input", str(exports[name]), "--out", str(out), "--no-figures",
                    "--quiet", "--batch-users", "700", "--workers", "2")
        assert r.returncode == 0, (name, r.stderr)
        pd.testing.assert_frame_equal(_homes(out), _homes(ref))
        assert pd.read_csv(out / "rejected_rows.csv").empty


@pytest.mark.parametrize("where", ["across batches", "inside a batch"])
@pytest.mark.slow
def test_a_user_whose_rows_are_apart_is_named_with_two_lines(exports, tmp_path, where):
    lines = exports["collation_csv"].read_text().splitlines(keepends=True)
    header, body = lines[0], lines[1:]
    guid = body[3].split(",")[0]
    first = next(i for i, ln in enumerate(body) if ln.startswith(guid + ","))
    moved = body.pop(first)
    at = len(body) if where == "across batches" else first + 30
    body.insert(at, moved)
    src = tmp_path / "split.csv"
    src.write_text(header + "".join(body))
    out = tmp_path / "out"
    r = homeloc("run", "--input", str(src), "--out", str(out), "--no-figures", "--quiet",
                "--batch-users", "700", "--workers", "2")
    assert r.returncode == 2, r.stderr
    msg = r.stderr.strip()
    assert len(msg.splitlines()) == 1
    expect = [i + 2 for i, ln in enumerate(body) if ln.startswith(guid + ",")]
    assert guid in msg and f"line {expect[0]} " in msg and f"line {expect[-1]} " in msg
    assert not (out / "user_classification.csv").exists()


@pytest.mark.parametrize("change", ["append", "replace"])
@pytest.mark.slow
def test_a_file_changed_during_a_run_stops_its_batches(small_input, tmp_path, change):
    """A batch reads only the file it was planned for: appended or replaced bytes stop it."""
    import shutil

    from homeloc_assets.backends import EmbeddedBackend
    from homeloc_assets.catalog import Catalog
    from homeloc_assets.geo import CountryLookup, dissolve_countries, load_world_countries
    from homeloc_assets.inference import process_batch
    from homeloc_assets.inputs import InputError

    src = tmp_path / "in.csv"
    shutil.copy(small_input, src)
    catalog = Catalog(tmp_path / "storage")
    _, keys = catalog.register(src, 1000)
    refs = [catalog.batch(k) for k in keys]
    countries = dissolve_countries(load_world_countries())
    lookup = CountryLookup.from_countries(countries)
    args = (countries["country"].to_numpy(), countries["country_code"].to_numpy(), lookup,
            EmbeddedBackend())

    def run(ref):
        return process_batch(ref.path, ref.start, ref.end, *args, expect=ref.expect)

    assert run(refs[0]).homes.num_rows > 0
    if change == "append":
        with open(src, "a") as fh:
            fh.write(pd.read_csv(small_input).tail(3).to_csv(header=False, index=False))
    else:
        lines = src.read_text().splitlines(keepends=True)
        (tmp_path / "new.csv").write_text(lines[0] + "".join(reversed(lines[1:])))
        os.replace(tmp_path / "new.csv", src)
    with pytest.raises(InputError, match="changed during the run"):
        run(refs[1])


def test_one_user_is_found_in_a_file_in_collation_order(exports):
    from homeloc_assets.inputs import find_user

    df = pd.read_csv(exports["collation_csv"])
    for guid in (df.user_guid.iloc[0], df.user_guid.iloc[len(df) // 2], df.user_guid.iloc[-1]):
        got = find_user(exports["collation_csv"], guid, global_lines=True)
        want = [i + 2 for i in df.index[df.user_guid == guid]]
        assert got.rows.column("line").to_pylist() == want
