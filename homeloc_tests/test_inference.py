"""The home and the classification: argmax of cardinalities, ties, runner-up, min userdays."""

import numpy as np
import pyarrow as pa
import pytest

from homeloc_assets import hll
from homeloc_assets.backends import EmbeddedBackend
from homeloc_assets.inference import (
    CLASS_LOCAL,
    CLASS_TOURIST,
    CLASS_UNDETERMINED,
    country_userdays,
    pick_homes,
)
from homeloc_assets.inference.rules import HomeRule, apply_rule
from homeloc_tests.helpers import days

NAMES = np.array(["France", "Germany", "Japan", "United Kingdom"], dtype=object)
CODES = np.array(["FRA", "DEU", "JPN", "GBR"], dtype=object)


def run(rows):
    guid = pa.array([r[0] for r in rows], pa.string())
    cidx = np.array([r[1] for r in rows])
    blobs = pa.array([r[2] for r in rows], pa.binary())
    per_country, per_user = country_userdays(guid, cidx, blobs, NAMES, CODES, EmbeddedBackend())
    return per_country, per_user, pick_homes(per_country, per_user)


def test_home_is_the_country_with_most_distinct_days_not_most_rows():
    rows = [
        # user a: 3 rows in France with the same 2 days, 1 row in Japan with 3 days
        ("a", 0, days(1, 2)),
        ("a", 0, days(1, 2)),
        ("a", 0, days(2)),
        ("a", 2, days(5, 6, 7)),
    ]
    per_country, _, homes = run(rows)
    assert per_country.column("userdays").to_pylist() == [2.0, 3.0]
    h = homes.to_pylist()[0]
    assert (h["country"], h["userdays"], h["runner_up"], h["runner_up_userdays"]) == (
        "Japan", 3.0, "France", 2.0)
    assert h["total_userdays"] == 5.0
    assert h["home_share"] == pytest.approx(3 / 5)
    assert h["margin"] == 1.0 and h["tie"] is False and h["countries"] == 2


def test_seed_defect_string_comparison_would_pick_differently():
    """The seed's idxmax over HLL strings is not the argmax of cardinalities.

    One day in France has the larger hex text, ten days in Germany the larger
    cardinality: a string max would say France, homeloc must say Germany.
    """
    few, many = days(2), days(*range(2, 12))
    assert hll.to_hex(few) > hll.to_hex(many)  # what a string comparison would pick
    assert hll.cardinality(few) < hll.cardinality(many)
    rows = [("u", 0, few), ("u", 1, many)]
    _, _, homes = run(rows)
    assert homes.column("country").to_pylist() == ["Germany"]


def test_tie_goes_to_first_country_by_name_and_is_flagged():
    rows = [("t", 3, days(1, 2)), ("t", 0, days(3, 4))]
    _, _, homes = run(rows)
    h = homes.to_pylist()[0]
    assert h["country"] == "France" and h["runner_up"] == "United Kingdom"
    assert h["tie"] is True and h["margin"] == 0.0


def test_points_in_no_country_are_counted_not_unioned():
    rows = [("n", -1, days(1, 2, 3)), ("n", 1, days(4)), ("z", -1, days(9))]
    per_country, per_user, homes = run(rows)
    assert per_user.column("locations_no_country").to_pylist() == [1, 1]
    assert per_user.column("total_userdays").to_pylist() == [1.0, 0.0]
    assert homes.column("user_guid").to_pylist() == ["n"]  # z has no home
    assert homes.column("locations_no_country").to_pylist() == [1]


def test_single_country_user_has_no_runner_up():
    _, _, homes = run([("s", 1, days(1, 2, 3))])
    h = homes.to_pylist()[0]
    assert h["runner_up"] is None and h["runner_up_userdays"] == 0.0 and h["home_share"] == 1.0


def test_classification_with_min_userdays():
    rows = [
        ("a", 1, days(1, 2, 3)),
        ("b", 2, days(1, 2, 3, 4)),
        ("c", 1, days(1)),
    ]
    _, _, homes = run(rows)
    cls = apply_rule(homes, HomeRule(min_userdays=2), "DEU")
    assert dict(zip(cls.column("user_guid").to_pylist(), cls.column("classification").to_pylist(),
                    strict=True)) == {"a": CLASS_LOCAL, "b": CLASS_TOURIST, "c": CLASS_UNDETERMINED}
    cls0 = apply_rule(homes, HomeRule(), "DEU")
    assert cls0.column("classification").to_pylist() == [CLASS_LOCAL, CLASS_TOURIST, CLASS_LOCAL]


def test_many_users_vectorised_equals_scalar_union():
    rng = np.random.default_rng(3)
    rows = []
    for u in range(300):
        for _ in range(rng.integers(1, 6)):
            rows.append((f"{u:05d}", int(rng.integers(-1, 4)),
                         days(*rng.integers(0, 400, rng.integers(1, 40)).tolist())))
    per_country, per_user, homes = run(rows)
    by = {}
    for g, c, b in rows:
        if c >= 0:
            by.setdefault((g, NAMES[c]), []).append(b)
    expect = {k: hll.cardinality(hll.union(v)) for k, v in by.items()}
    got = {(g, c): d for g, c, d in zip(per_country.column("user_guid").to_pylist(),
                                        per_country.column("country").to_pylist(),
                                        per_country.column("userdays").to_pylist(), strict=True)}
    assert got == expect
    for h in homes.to_pylist():
        best = max(v for (g, _), v in expect.items() if g == h["user_guid"])
        assert h["userdays"] == best


class _BytesOnly:
    """A backend without ``takes_parsed``: it is given the bytes (as PostgreSQL is)."""

    def __init__(self) -> None:
        self.calls = []

    def grouped_cardinality(self, blobs, groups, n_groups):
        assert isinstance(blobs, pa.Array), type(blobs)
        self.calls.append(len(blobs))
        return hll.grouped_cardinality(blobs, groups, n_groups)


def test_a_given_parse_gives_the_same_userdays_as_the_bytes():
    """country_userdays with the reader's parse (all rows, some outside any country) equals
    the same call on the bytes, for the embedded engine and for a bytes-only backend."""
    rng = np.random.default_rng(8)
    rows = [(f"{u:04d}", int(rng.integers(-1, 4)),
             days(*rng.integers(0, 900, rng.integers(1, 200)).tolist()))
            for u in range(200) for _ in range(rng.integers(1, 5))]
    guid = pa.array([r[0] for r in rows], pa.string())
    cidx = np.array([r[1] for r in rows])
    blobs = pa.array([r[2] for r in rows], pa.binary())
    parsed = hll.parse_many(blobs)
    want = country_userdays(guid, cidx, blobs, NAMES, CODES, _BytesOnly())
    for backend, p in ((EmbeddedBackend(), parsed), (EmbeddedBackend(), None),
                       (_BytesOnly(), parsed)):
        got = country_userdays(guid, cidx, blobs, NAMES, CODES, backend, p)
        assert got[0].equals(want[0]) and got[1].equals(want[1])
    inside = cidx >= 0
    assert (cidx < 0).any() and inside.any()
    only_inside = country_userdays(guid.filter(pa.array(inside)), cidx[inside],
                                   blobs.filter(pa.array(inside)), NAMES, CODES,
                                   EmbeddedBackend(), parsed.take(np.flatnonzero(inside)))
    assert only_inside[0].column("userdays").equals(want[0].column("userdays"))
