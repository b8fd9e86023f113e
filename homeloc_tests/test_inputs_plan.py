"""plan_batches: whole users per batch, full coverage, seeks only, header errors, keys."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from homeloc_assets.catalog import Catalog
from homeloc_assets.inputs import BatchPlan, InputError, plan_batches

HEADER = "user_guid,latitude,longitude,userday_hll"
HX = "\\x128b7f0000000000000001"


def make(tmp_path, users, name="data.csv", newline="\n", bom=False) -> str:
    """users: list of (guid, n_rows)."""
    out = [HEADER]
    for g, n in users:
        out += [f"{g},1.0,2.0,{HX}"] * n
    data = (newline.join(out) + newline).encode()
    p = tmp_path / name
    p.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)
    return str(p)


def users_per_batch(path, plan):
    with open(path, "rb") as fh:
        raw = fh.read()
    res = []
    for b in plan.batches:
        chunk = raw[b.start : b.end].decode()
        res.append([ln.split(",")[0] for ln in chunk.splitlines() if ln.strip()])
    return res


def check_plan(path, plan, users):
    assert plan.batches[0].start == plan.header_end
    assert plan.batches[-1].end == plan.size
    for a, b in zip(plan.batches, plan.batches[1:], strict=False):
        assert a.end == b.start and a.start < a.end
    assert [b.index for b in plan.batches] == list(range(len(plan.batches)))
    seen = {}
    for i, guids in enumerate(users_per_batch(path, plan)):
        for g in guids:
            assert seen.setdefault(g, i) == i, f"user {g} in batches {seen[g]} and {i}"
    assert sorted(seen) == sorted(g for g, _ in users)


@pytest.mark.parametrize("batch_users", [1, 2, 3, 7, 50, 10**6])
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_every_user_in_exactly_one_batch(tmp_path, batch_users, newline):
    rng = np.random.default_rng(batch_users)
    users = [(f"u{i:04d}", int(rng.integers(1, 6))) for i in range(120)]
    users[40] = ("u0040", 300)  # a heavy user spanning planned boundaries
    path = make(tmp_path, users, newline=newline, bom=batch_users == 3)
    plan = plan_batches(path, batch_users)
    check_plan(path, plan, users)
    if batch_users == 1:
        assert len(plan.batches) > 60
    if batch_users == 10**6:
        assert len(plan.batches) == 1


def test_boundary_offsets_mid_line(tmp_path, monkeypatch):
    users = [(f"g{i:03d}", 1 + i % 4) for i in range(200)]
    path = make(tmp_path, users)
    import homeloc_assets.inputs.plan as plan_mod

    for spl in (1000, 1001, 1037):  # weird sample sizes give odd target offsets
        monkeypatch.setattr(plan_mod, "SAMPLE_BYTES", spl)
        for bu in (1, 2, 5, 13):
            check_plan(path, plan_batches(path, bu), users)


def test_heavy_user_to_eof(tmp_path):
    users = [("a", 1), ("b", 2), ("z", 5000)]
    path = make(tmp_path, users)
    plan = plan_batches(path, 1)
    check_plan(path, plan, users)
    assert users_per_batch(path, plan)[-1][-5000:] == ["z"] * 5000


def test_plan_reads_little_of_a_big_file(tmp_path):
    # ~40 MB of real lines; planning must only read the sample and small windows
    line = f"{{}},1.0,2.0,{HX}\n"
    p = tmp_path / "big.csv"
    with open(p, "w") as fh:
        fh.write(HEADER + "\n")
        for i in range(0, 1_000_000, 1000):
            fh.write("".join(line.format(f"user{j:08d}") for j in range(i, i + 1000)))
    plan = plan_batches(p, 20_000)
    import homeloc_assets.inputs.plan as plan_mod

    assert len(plan.batches) >= 40
    assert plan_batches.last_bytes_read < plan_mod.SAMPLE_BYTES + len(plan.batches) * 200_000
    assert plan_batches.last_bytes_read < plan.size / 4


def test_json_roundtrip_and_keys(tmp_path):
    path = make(tmp_path, [(f"u{i}", 2) for i in range(50)], name="my input-file.v2.csv")
    plan = plan_batches(path, 5)
    again = BatchPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan
    assert len(plan.fingerprint) == 12
    plan_id, keys = Catalog(tmp_path / "storage").register(path, 5)
    assert len(keys) == len(plan.batches)
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert keys[0] == f"{plan_id}-00000" and plan_id.startswith("my_input_file_v2-")
    assert re.fullmatch(r"my_input_file_v2-[0-9a-f]{8}", plan_id)


def test_empty_and_header_only(tmp_path):
    p = tmp_path / "e.csv"
    p.write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        plan_batches(p)
    p.write_text(HEADER + "\n")
    with pytest.raises(InputError, match="no data"):
        plan_batches(p)
    p.write_text(HEADER + "\r\n\r\n")
    with pytest.raises(InputError, match="no data"):
        plan_batches(p)


def test_bad_columns(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text("user_guid,lat,lon,userday_hll\na,1,1,x\n")
    with pytest.raises(InputError) as ei:
        plan_batches(p)
    msg = str(ei.value)
    assert "latitude" in msg and "longitude" in msg and "found: user_guid, lat, lon" in msg


def test_binary_garbage(tmp_path):
    p = tmp_path / "g.csv"
    p.write_bytes(bytes(range(256)) * 100)
    with pytest.raises(InputError):
        plan_batches(p)
    p.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(1000))
    with pytest.raises(InputError, match="not a CSV"):
        plan_batches(p)


def test_users_in_any_order_are_planned_at_user_changes(tmp_path):
    """Not in byte order (a database collation, numeric ids): still cut between users."""
    users = (
        [(f"u{i:03d}", 2) for i in range(50)] + [("a", 3)] + [(f"V{i:03d}", 1) for i in range(50)]
    )
    path = make(tmp_path, users)
    data = Path(path).read_bytes()
    for bu in range(1, 10):
        plan = plan_batches(path, bu)
        for b in plan.batches[1:]:
            before = data[:b.start].rstrip(b"\n").rsplit(b"\n", 1)[-1].split(b",")[0]
            after = data[b.start:].split(b",", 1)[0]
            assert before != after
