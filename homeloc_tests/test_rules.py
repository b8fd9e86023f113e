"""Home rules: thresholds give exactly the users the rule names; ambiguity; sensitivity; truth."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from homeloc_assets.backends import EmbeddedBackend
from homeloc_assets.inference import country_userdays, pick_homes
from homeloc_assets.inference.rules import (
    HomeRule,
    apply_rule,
    relative_error,
    rule_grid,
    sensitivity,
    standard_error,
)
from homeloc_tests.helpers import days

NAMES = np.array(["France", "Germany", "Japan"], dtype=object)
CODES = np.array(["FRA", "DEU", "JPN"], dtype=object)


def homes_of(rows) -> pa.Table:
    guid = pa.array([r[0] for r in rows], pa.string())
    per_country, per_user = country_userdays(guid, np.array([r[1] for r in rows]),
                                             pa.array([r[2] for r in rows], pa.binary()),
                                             NAMES, CODES, EmbeddedBackend())
    return pick_homes(per_country, per_user)


@pytest.fixture(scope="module")
def random_homes() -> pa.Table:
    rng = np.random.default_rng(5)
    rows = []
    for u in range(400):
        for _ in range(rng.integers(1, 5)):
            rows.append((f"u{u:04d}", int(rng.integers(0, 3)),
                         days(*rng.integers(0, 300, rng.integers(1, 12)).tolist())))
    return homes_of(rows)


def test_thresholds_give_exactly_the_users_the_rule_names(random_homes):
    rule = HomeRule(min_userdays=4, min_share=0.5, min_margin=2, ambiguity_z=0)
    out = apply_rule(random_homes, rule, "DEU").to_pylist()
    assert out
    for r in out:
        if r["total_userdays"] < 4:
            want = ("undetermined", "total_userdays_below_min", "undetermined")
        elif r["home_share"] < 0.5:
            want = ("undetermined", "home_share_below_min", "undetermined")
        elif r["margin"] < 2:
            want = ("undetermined", "margin_below_min", "undetermined")
        else:
            want = ("determined", None, "Local" if r["country_code"] == "DEU" else "Tourist")
        assert (r["status"], r["reason"], r["classification"]) == want, r
    assert {r["reason"] for r in out} >= {"total_userdays_below_min", "home_share_below_min", None}


def test_the_default_rule_classifies_like_the_plain_argmax(random_homes):
    out = apply_rule(random_homes, HomeRule(), "DEU")
    want = ["Local" if c == "DEU" else "Tourist" for c in out.column("country_code").to_pylist()]
    assert out.column("classification").to_pylist() == want


def test_exact_explicit_unions_are_never_ambiguous_but_estimates_can_be():
    # EXPLICIT (default params): 6 vs 5 days is exact, so a margin of one decides
    exact = apply_rule(homes_of([("a", 0, days(*range(6))), ("a", 1, days(*range(10, 15)))]),
                       HomeRule(), "DEU").to_pylist()[0]
    assert (exact["status"], exact["country"]) == ("determined", "France")
    # the seed's (11, 5, 0, 1): SPARSE from the first element, every count is an estimate
    p = (11, 5, 0, 1)
    est = apply_rule(homes_of([("b", 0, days(*range(100), params=p)),
                               ("b", 1, days(*range(1000, 1097), params=p))]),
                     HomeRule(), "DEU", explicit_max=0).to_pylist()[0]
    assert est["userdays"] - est["runner_up_userdays"] < 1.96 * relative_error(11) * 140
    assert (est["status"], est["reason"], est["classification"]) == (
        "ambiguous", "within_estimator_error", "Tourist")
    dropped = apply_rule(homes_of([("b", 0, days(*range(100), params=p)),
                                   ("b", 1, days(*range(1000, 1097), params=p))]),
                         HomeRule(drop_ambiguous=True), "DEU", explicit_max=0).to_pylist()[0]
    assert dropped["classification"] == "undetermined"


def test_a_tie_is_ambiguous():
    out = apply_rule(homes_of([("t", 2, days(1, 2)), ("t", 0, days(3, 4))]), HomeRule(), "DEU")
    assert out.column("reason").to_pylist() == ["tie"]


def test_standard_error_is_zero_only_for_counts_an_explicit_union_can_hold():
    se = standard_error(np.array([3.0, 3.2, 200.0]), 11, 160)
    assert se[0] == 0 and se[1] > 0 and se[2] == pytest.approx(200 * 1.04 / math.sqrt(2048))
    assert standard_error(np.array([3.0]), 11, 0)[0] > 0


def test_sensitivity_rows_equal_separate_applications(random_homes):
    chosen = HomeRule(min_userdays=3)
    rules = rule_grid(chosen, min_userdays=(0, 3, 6), min_share=(0, 0.6), min_margin=(0, 2))
    table = sensitivity(random_homes, "DEU", rules, chosen).to_pylist()
    base = apply_rule(random_homes, chosen, "DEU").column("classification").to_pylist()
    assert len(table) == 12
    for rule, row in zip(rules, table, strict=True):
        cls = apply_rule(random_homes, rule, "DEU").column("classification").to_pylist()
        assert row["locals"] == cls.count("Local") and row["tourists"] == cls.count("Tourist")
        assert row["undetermined"] == cls.count("undetermined")
        assert row["changed_share"] == pytest.approx(
            sum(a != b for a, b in zip(cls, base, strict=True)) / len(cls))
    assert len({r["classified"] for r in table}) > 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sensitivity_by_cells_equals_rule_by_rule(random_homes, monkeypatch, seed):
    """The one-pass cell tally gives the rows of the rule-by-rule tally, value for value:
    rules in any order with repeated and unsorted thresholds, several ambiguity_z (0 too),
    drop_ambiguous both ways, a truth, and homes with missing runner-ups and NaN shares."""
    from homeloc_assets.inference import rules as R

    rng = np.random.default_rng(seed)
    n = random_homes.num_rows
    homes = random_homes
    share = homes.column("home_share").to_numpy(zero_copy_only=False).astype(float)
    share[rng.random(n) < 0.05] = np.nan
    homes = homes.set_column(homes.column_names.index("home_share"), "home_share",
                             pa.array(share))
    rules = [HomeRule(min_userdays=float(rng.choice([0, 1, 2.5, 3, 8])),
                      min_share=float(rng.choice([0, 0.3, 0.5, 1.0])),
                      min_margin=float(rng.choice([0, 1, 2])),
                      ambiguity_z=float(rng.choice([0, 0.5, 1.96, 3])),
                      drop_ambiguous=bool(rng.integers(2))) for _ in range(40)]
    guids = homes.column("user_guid").to_pylist()
    truth = pa.table({"user_guid": guids[::2] + ["nobody"],
                      "classification": ["Local" if i % 3 else "Tourist"
                                         for i in range(len(guids[::2]))] + ["Tourist"]})
    for t in (None, truth):
        by_cells = sensitivity(homes, "DEU", rules, rules[0], explicit_max=0, truth=t)
        monkeypatch.setattr(R, "_MAX_CELLS", 0)  # forces the rule-by-rule tally
        by_rule = sensitivity(homes, "DEU", rules, rules[0], explicit_max=0, truth=t)
        monkeypatch.undo()
        assert by_cells.column_names == by_rule.column_names
        for a, b in zip(by_cells.to_pylist(), by_rule.to_pylist(), strict=True):
            assert a.keys() == b.keys()
            for k in a:
                same = (a[k] == b[k]) or (isinstance(a[k], float) and math.isnan(a[k])
                                          and math.isnan(b[k]))
                assert same and type(a[k]) is type(b[k]), (k, a[k], b[k])
    assert len({(r["classified"], r["ambiguous"]) for r in by_cells.to_pylist()}) > 5


def test_validation_counts_against_truth(random_homes):
    guids = random_homes.column("user_guid").to_pylist()
    truth_cls = ["Local" if i % 3 else "Tourist" for i in range(len(guids))]
    truth = pa.table({"user_guid": guids + ["nobody"], "classification": truth_cls + ["Local"]})
    rule = HomeRule()
    row = sensitivity(random_homes, "DEU", [rule], rule, truth=truth).to_pylist()[0]
    pred = apply_rule(random_homes, rule, "DEU").column("classification").to_pylist()
    right = sum(p == t for p, t in zip(pred, truth_cls, strict=True))
    assert row["accuracy"] == pytest.approx(right / len(pred))
    assert row["truth_Local_as_undetermined"] == 1  # the user without any home row
    assert row["undetermined_share"] == pytest.approx(1 / (len(guids) + 1))
    total = sum(v for k, v in row.items() if k.startswith("truth_"))
    assert total == len(guids) + 1


def test_rule_rejects_nonsense():
    with pytest.raises(ValueError, match="min_share"):
        HomeRule(min_share=1.5)
    with pytest.raises(ValueError, match="min_margin"):
        HomeRule(min_margin=-1)


def _finished_run(tmp_path, homes: pa.Table):
    import json

    import pyarrow.parquet as pq

    pq.write_table(homes, tmp_path / "user_home_locations.parquet")
    pq.write_table(pa.table({"country": ["Germany", "France"], "country_code": ["DEU", "FRA"]}),
                   tmp_path / "user_country_userdays.parquet")
    (tmp_path / "summary.json").write_text(json.dumps({"study_country_code": "DEU"}))


def _args(tmp_path, *extra):
    import argparse

    from homeloc_assets import sensitivity as sens

    p = argparse.ArgumentParser()
    sens.add_arguments(p)
    p.add_argument("--truth")
    return p.parse_args(["--out", str(tmp_path), *extra])


def test_sensitivity_command_writes_the_table_and_figure(tmp_path, random_homes, capsys):
    import pyarrow.csv as pacsv

    from homeloc_assets import sensitivity as sens

    _finished_run(tmp_path, random_homes)
    args = _args(tmp_path, "--min-userdays", "3", "--grid-userdays", "0,3", "--grid-share", "0,0.5",
                 "--grid-margin", "0")
    assert sens.main(args) == 0
    table = pacsv.read_csv(tmp_path / "analysis" / "sensitivity.csv").to_pylist()
    assert len(table) == 4
    chosen = next(r for r in table if r["min_userdays"] == 3 and r["min_share"] == 0)
    assert chosen["changed_share"] == 0
    cls = apply_rule(random_homes, HomeRule(min_userdays=3), "DEU").column("classification")
    assert chosen["locals"] == cls.to_pylist().count("Local")
    assert (tmp_path / "analysis" / "figures" / "sensitivity.png").stat().st_size > 0
    assert "table:" in capsys.readouterr().out


def test_sensitivity_removes_what_a_killed_writer_left(tmp_path, random_homes):
    """kill -9 while sensitivity.csv or its figure was written leaves ``.NAME.*.tmp``: gone next time."""
    from homeloc_assets import sensitivity as sens

    _finished_run(tmp_path, random_homes)
    where = tmp_path / "analysis"
    (where / "figures").mkdir(parents=True, exist_ok=True)
    stale = [where / ".sensitivity.csv.k1ll3d.tmp", where / "figures" / ".sensitivity.png.k1ll3d.tmp"]
    for p in stale:
        p.write_bytes(b"half")
    assert sens.main(_args(tmp_path, "--grid-userdays", "0", "--grid-share", "0",
                           "--grid-margin", "0")) == 0
    assert not any(p.exists() for p in stale)
    assert (where / "sensitivity.csv").exists()


def test_validate_command_reads_a_synth_truth_file(tmp_path, random_homes, capsys):
    import pyarrow.csv as pacsv

    from homeloc_assets import sensitivity as sens

    _finished_run(tmp_path, random_homes)
    guids = random_homes.column("user_guid").to_pylist()
    truth = pa.table({"user_guid": guids, "home_country": ["x"] * len(guids),
                      "home_country_code": ["X"] * len(guids),
                      "classification": ["Tourist"] * len(guids)})
    pacsv.write_csv(truth, tmp_path / "t.csv")
    args = _args(tmp_path, "--truth", str(tmp_path / "t.csv"), "--study-country", "germany",
                 "--no-figures", "--grid-userdays", "0", "--grid-share", "0", "--grid-margin", "0")
    assert sens.main(args, validate=True) == 0
    row = pacsv.read_csv(tmp_path / "analysis" / "validation.csv").to_pylist()[0]
    cls = apply_rule(random_homes, HomeRule(), "DEU").column("classification").to_pylist()
    assert row["accuracy"] == pytest.approx(cls.count("Tourist") / len(cls))
    assert row["truth_Tourist_as_Local"] == cls.count("Local")
    assert "accuracy" in capsys.readouterr().out


def test_sensitivity_without_a_run_says_what_to_do(tmp_path):
    from homeloc_assets import sensitivity as sens

    with pytest.raises(FileNotFoundError, match="homeloc run"):
        sens.main(_args(tmp_path))
