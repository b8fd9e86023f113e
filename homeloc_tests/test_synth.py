"""Tests of the synthetic data generator (homeloc_assets.synth): format, determinism, truth."""

from __future__ import annotations

import io
import re

import numpy as np
import pandas as pd
import pytest

from homeloc_assets import hll, synth

N_USERS = 3000
HEX32 = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture(scope="module")
def countries():
    from homeloc_assets.geo.countries import dissolve_countries, load_world_countries

    return dissolve_countries(load_world_countries())


@pytest.fixture(scope="module")
def generated(tmp_path_factory, countries):
    """A small file with many heavy locations, so that all three HLL types occur."""
    out = tmp_path_factory.mktemp("synth") / "users.csv"
    summary = synth.generate(
        N_USERS, out, seed=11, heavy_share=0.05, chunk_users=1000, countries=countries
    )
    data = pd.read_csv(out, dtype=str, keep_default_na=False)
    truth = pd.read_csv(summary.truth_path, dtype=str, keep_default_na=False)
    return summary, data, truth


@pytest.mark.slow
def test_header_and_summary(generated):
    summary, data, truth = generated
    assert list(data.columns) == ["user_guid", "latitude", "longitude", "userday_hll"]
    assert list(truth.columns) == [
        "user_guid",
        "home_country",
        "home_country_code",
        "classification",
    ]
    assert summary.out_path.read_text().splitlines()[0] == synth.HEADER
    assert summary.n_rows == len(data)
    assert summary.n_users == len(truth) == N_USERS
    assert summary.n_locals + summary.n_tourists == N_USERS
    assert summary.bytes_written == summary.out_path.stat().st_size
    assert sum(summary.hll_types.values()) == len(data)
    assert summary.truth_path == synth.truth_path_for(summary.out_path)


@pytest.mark.slow
def test_sorted_ids_and_unique_locations(generated):
    _, data, truth = generated
    guids = data["user_guid"].to_numpy()
    assert all(HEX32.match(g) for g in truth["user_guid"])
    assert (guids[1:] >= guids[:-1]).all(), "rows not sorted by user_guid"
    t = truth["user_guid"].to_numpy()
    assert (t[1:] > t[:-1]).all(), "truth ids not strictly sorted"
    assert list(pd.unique(guids)) == list(t), "every truth user has rows, in the same order"
    assert not data.duplicated(["user_guid", "latitude", "longitude"]).any()
    for col, lim in (("latitude", 90), ("longitude", 180)):
        assert data[col].str.fullmatch(r"-?\d{1,3}\.\d{2}").all()
        assert data[col].astype(float).abs().max() <= lim


@pytest.mark.slow
def test_rows_per_user_distribution(generated):
    _, data, _ = generated
    per_user = data.groupby("user_guid").size()
    assert 2.0 <= per_user.mean() <= 4.5
    assert (per_user == 1).mean() > 0.2, "many users have a single location"
    assert per_user.max() >= 10 * per_user.median(), "heavy tail"
    assert per_user.max() <= 1000


@pytest.mark.slow
def test_every_hll_decodes_with_intended_type_mix(generated):
    summary, data, _ = generated
    names = {0x12: "explicit", 0x13: "sparse", 0x14: "full"}
    counts = dict.fromkeys(names.values(), 0)
    for text in data["userday_hll"]:
        assert text.startswith("\\x") and text[4:8] == "8b7f"
        decoded = hll.decode(text)
        assert decoded is not None
        counts[names[int(text[2:4], 16)]] += 1
        # canonical encoding: re-packing what we wrote gives the same bytes
        assert hll.to_hex(hll.union([text])) == text
    assert counts == summary.hll_types
    assert counts["explicit"] > 0.8 * len(data)
    assert counts["sparse"] > 0 and counts["full"] > 0


@pytest.mark.slow
def test_explicit_values_are_day_hashes_sorted_signed(generated):
    _, data, _ = generated
    day_hashes = {hll.hash_bigint(d) for d in range(4383)}
    for text in data["userday_hll"][:300]:
        if not text.startswith("\\x128b7f"):
            continue
        body = bytes.fromhex(text[8:])
        vals = [int.from_bytes(body[i : i + 8], "big", signed=True) for i in range(0, len(body), 8)]
        assert vals == sorted(set(vals))
        assert set(vals) <= day_hashes
        assert hll.cardinality(text) == len(vals)


@pytest.mark.slow
def test_truth_matches_reference_inference(generated, countries):
    """Join points to countries (within), union per (user, country), max cardinality = truth."""
    from homeloc_assets.geo.lookup import exact_lookup

    _, data, truth = generated
    geoms = np.asarray(countries.geometry.array, dtype=object)
    idx = exact_lookup(geoms, data["longitude"].astype(float), data["latitude"].astype(float))
    assert (idx >= 0).all(), "every generated point lies inside a country"
    df = data.assign(country=countries["country"].to_numpy()[idx])
    card = (
        df.groupby(["user_guid", "country"])["userday_hll"]
        .agg(lambda s: hll.cardinality(hll.union(list(s))))
        .rename("days")
        .reset_index()
        .sort_values(["user_guid", "days", "country"], ascending=[True, False, True])
    )
    rank = card.groupby("user_guid").cumcount()
    home = card[rank == 0].set_index("user_guid")
    merged = truth.set_index("user_guid").join(home)
    assert (merged["home_country"] == merged["country"]).all()
    # strict winner: home has more than twice the days of any other country
    second = card[rank == 1].set_index("user_guid")["days"]
    assert len(second) > 0.2 * len(truth)
    assert (home.loc[second.index, "days"] > 2 * second).all()
    codes = dict(zip(countries["country"], countries["country_code"], strict=True))
    assert (truth["home_country_code"] == truth["home_country"].map(codes)).all()
    local = truth["home_country"] == "Germany"
    assert (truth["classification"] == np.where(local, "Local", "Tourist")).all()
    # tourists visited the study country
    tourists = set(truth.loc[~local, "user_guid"])
    visited = set(df.loc[df["country"] == "Germany", "user_guid"])
    assert tourists <= visited
    assert 0.6 < local.mean() < 0.8
    assert truth.loc[~local, "home_country"].nunique() > 10


@pytest.mark.slow
@pytest.mark.heavy  # CI time
def test_deterministic_per_seed(tmp_path, countries):
    a = synth.generate(500, tmp_path / "a.csv", seed=3, countries=countries)
    b = synth.generate(500, tmp_path / "b.csv", seed=3, countries=countries)
    c = synth.generate(500, tmp_path / "c.csv", seed=4, countries=countries)
    assert a.out_path.read_bytes() == b.out_path.read_bytes()
    assert a.truth_path.read_bytes() == b.truth_path.read_bytes()
    assert a.out_path.read_bytes() != c.out_path.read_bytes()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == [], "temporary files are renamed into place"


def test_registers_and_packing_match_hll_add(countries):
    rng = np.random.default_rng(0)
    for n in (200, 900):
        vals = rng.integers(-(2**62), 2**62, n)
        hashes = np.array([hll.hash_bigint(int(v)) for v in vals], dtype=np.int64)
        regs = synth.registers_from_hashes(np.zeros(n, dtype=np.int64), hashes, 1)
        t = int(synth.sparse_or_full(regs)[0])
        if t == synth.TYPE_SPARSE:
            body = synth.pack_sparse(regs)[1].tobytes()
        else:
            body = synth.pack_full(regs)[0].tobytes()
        mine = bytes([t, synth.PARAM_BYTE, synth.CUTOFF_BYTE]) + body
        ref = hll.empty()
        for h in hashes:
            ref = hll.add(ref, int(h))
        assert hll.to_hex(mine) == hll.to_hex(ref), n


@pytest.mark.slow
def test_cli_writes_files(tmp_path, capsys):
    out = tmp_path / "cli.csv"
    assert synth.synth_main(["--users", "300", "--out", str(out), "--seed", "2"]) == 0
    captured = capsys.readouterr()
    assert "300 users" in captured.out
    assert "synth:" in captured.err  # plain progress lines when stderr is not a terminal
    assert out.exists() and synth.truth_path_for(out).exists()
    assert (
        synth.synth_main(["--users", "10", "--out", str(out), "--study-country", "Atlantis"]) == 2
    )


@pytest.mark.postgres
@pytest.mark.slow
def test_postgres_accepts_every_value_and_agrees_on_cardinality(generated, pg_conn):
    _, data, _ = generated
    sample = pd.concat(
        [data.iloc[:1500], data[~data["userday_hll"].str.startswith("\\x12")]]
    ).drop_duplicates()
    buf = io.StringIO()
    sample[["user_guid", "latitude", "longitude", "userday_hll"]].to_csv(buf, index=False)
    buf.seek(0)
    with pg_conn.cursor() as cur:
        cur.execute(
            "CREATE TEMP TABLE synth_rows (user_guid text, latitude float8, longitude float8, "
            "userday_hll hll)"
        )
        cur.copy_expert("COPY synth_rows FROM STDIN WITH (FORMAT csv, HEADER true)", buf)
        cur.execute(
            "SELECT userday_hll::text, hll_cardinality(userday_hll), "
            "hll_union(userday_hll, hll_empty())::text FROM synth_rows"
        )
        rows = cur.fetchall()
        cur.execute("DROP TABLE synth_rows")
    assert len(rows) == len(sample)
    for text, pg_card, repacked in rows:
        assert pg_card == pytest.approx(hll.cardinality(text), rel=1e-12)
        assert repacked == text, "PostgreSQL packs the value the same way"


@pytest.fixture(scope="module")
def sparse_only(tmp_path_factory, countries):
    """explicit_max=0: every value SPARSE or FULL (like input whose values start with 138b7f)."""
    out = tmp_path_factory.mktemp("synth_sparse") / "users.csv"
    summary = synth.generate(400, out, seed=5, explicit_max=0, countries=countries)
    return summary, pd.read_csv(out, dtype=str, keep_default_na=False)


@pytest.mark.slow
def test_sparse_only_mode(sparse_only):
    summary, data = sparse_only
    assert summary.hll_types["explicit"] == 0
    assert data["userday_hll"].str.startswith("\\x138b7f").mean() > 0.95
    for text in data["userday_hll"]:
        assert hll.to_hex(hll.union([text])) == text
        assert hll.cardinality(text) >= 1


@pytest.mark.postgres
@pytest.mark.slow
def test_postgres_accepts_sparse_only_values(sparse_only, pg_conn):
    _, data = sparse_only
    values = list(data["userday_hll"])
    with pg_conn.cursor() as cur:
        cur.execute(
            "SELECT v, hll_cardinality(v::hll), hll_union(v::hll, hll_empty())::text "
            "FROM unnest(%s::text[]) AS v",
            (values,),
        )
        rows = cur.fetchall()
    assert len(rows) == len(values)
    for text, pg_card, repacked in rows:
        assert pg_card == pytest.approx(hll.cardinality(text), rel=1e-12)
        assert repacked == text


# ---------------------------------------------------------------- shapes (issue 16)
B64_ID = re.compile(r"^[A-Za-z0-9+/]{43}$")


@pytest.fixture(scope="module")
def seed_shape(tmp_path_factory, countries):
    """``--shape seed``: base64 ids, 11/5/0/1 values of hashed user:date texts, with the elements."""
    d = tmp_path_factory.mktemp("synth_seed")
    out = d / "seed.csv"
    summary = synth.generate(
        1500, out, seed=7, countries=countries, elements_path=d / "el.csv", **synth.SHAPES["seed"]
    )
    data = pd.read_csv(out, dtype=str, keep_default_na=False)
    elements = pd.read_csv(d / "el.csv", dtype=str, keep_default_na=False)
    return summary, data, elements


@pytest.mark.slow
def test_seed_shape_ids_values_and_truth(seed_shape):
    summary, data, elements = seed_shape
    truth = pd.read_csv(summary.truth_path, dtype=str, keep_default_na=False)
    assert truth["user_guid"].str.fullmatch(B64_ID.pattern).all()
    ids = truth["user_guid"]
    assert ids.str.contains("[a-z]").all() and ids.str.contains("[A-Z]").any()
    assert ids.str.contains(r"\+").any() and ids.str.contains("/").any()
    b = [g.encode() for g in ids]
    assert b == sorted(b) and len(set(b)) == len(b), "byte-sorted, distinct"
    assert list(pd.unique(data["user_guid"])) == list(ids)
    # every value SPARSE from the first element (or FULL), header 8b40, canonical
    assert summary.hll_types["explicit"] == 0
    assert data["userday_hll"].str.match(r"^\\x1[34]8b40").all()
    assert data["userday_hll"].str.startswith("\\x138b40").mean() > 0.99
    for text in data["userday_hll"][:400]:
        assert hll.to_hex(hll.union([text])) == text
    # heavy tail of locations per user
    per_user = data.groupby("user_guid").size()
    assert per_user.max() >= 20 * per_user.median()
    # the elements file is what the values are made of: hll_hash_text(userday_text(user, date))
    assert len(elements) >= len(data)
    one = elements.iloc[0]
    date = str(np.datetime64("2000-01-01") + int(one["day"]))
    assert one["userday"] == synth.userday_text(one["user_guid"], date)
    assert re.fullmatch("[0-9a-f]{32}", one["userday"])
    first = data.iloc[0]
    mine = elements[
        (elements["user_guid"] == first["user_guid"])
        & (elements["latitude"] == first["latitude"])
        & (elements["longitude"] == first["longitude"])
    ]
    ref = hll.empty(11, 5, 0, 1)
    for u in mine["userday"]:
        ref = hll.add(ref, hll.hash_text(u))
    assert hll.to_hex(ref) == first["userday_hll"]


@pytest.mark.postgres
@pytest.mark.slow
def test_seed_shape_values_equal_postgresql_hll_add_agg(seed_shape, pg_conn):
    """For a sample of users: hll_add_agg(hll_hash_text(userday), 11, 5, 0, 1) per row = the file."""
    _, data, elements = seed_shape
    users = set(pd.unique(data["user_guid"])[::7])
    big = data.groupby("user_guid").size()
    users |= set(big.nlargest(5).index)  # the users with the most rows too
    el = elements[elements["user_guid"].isin(users)]
    buf = io.StringIO()
    el[["user_guid", "latitude", "longitude", "userday"]].to_csv(buf, index=False)
    buf.seek(0)
    with pg_conn.cursor() as cur:
        cur.execute("CREATE EXTENSION IF NOT EXISTS hll")
        cur.execute(
            "CREATE TEMP TABLE synth_el (user_guid text, latitude text, longitude text, "
            "userday text)"
        )
        cur.copy_expert("COPY synth_el FROM STDIN WITH (FORMAT csv, HEADER true)", buf)
        cur.execute(
            "SELECT user_guid, latitude, longitude, "
            "hll_add_agg(hll_hash_text(userday), 11, 5, 0, 1)::text, "
            "hll_cardinality(hll_add_agg(hll_hash_text(userday), 11, 5, 0, 1)) "
            "FROM synth_el GROUP BY 1, 2, 3"
        )
        rows = cur.fetchall()
        cur.execute("DROP TABLE synth_el")
    mine = data[data["user_guid"].isin(users)].set_index(["user_guid", "latitude", "longitude"])
    assert len(rows) == len(mine) > 500
    for g, la, lo, pg_text, pg_card in rows:
        text = mine.loc[(g, la, lo), "userday_hll"]
        assert pg_text == text, (g, la, lo)
        assert hll.cardinality(text) == pg_card


@pytest.mark.slow
def test_heavy_shape_type_mix(tmp_path, countries):
    s = synth.generate(
        2000, tmp_path / "h.csv", seed=2, countries=countries, **synth.SHAPES["heavy"]
    )
    n = sum(s.hll_types.values())
    assert 0.14 < s.hll_types["sparse"] / n < 0.20
    assert 0.06 < s.hll_types["full"] / n < 0.10
    data = pd.read_csv(tmp_path / "h.csv", dtype=str, keep_default_na=False)
    assert data["user_guid"].str.fullmatch(B64_ID.pattern).all()
    for text in data["userday_hll"][::25]:
        assert hll.to_hex(hll.union([text])) == text


@pytest.mark.postgres
@pytest.mark.slow
def test_params_flag_other_thresholds(tmp_path, countries, pg_conn):
    """--params with expthresh 16 / sparseon 0: the bytes are PostgreSQL's for those settings."""
    for params in ((11, 5, 16, 1), (11, 5, -1, 0)):
        out = tmp_path / f"p{params[2]}_{params[3]}.csv"
        el = tmp_path / f"p{params[2]}_{params[3]}.el.csv"
        synth.generate(
            150,
            out,
            seed=4,
            countries=countries,
            params=params,
            elements_path=el,
            userdays="text",
            heavy_share=0.05,
        )
        data = pd.read_csv(out, dtype=str, keep_default_na=False)
        elements = pd.read_csv(el, dtype=str, keep_default_na=False)
        with pg_conn.cursor() as cur:
            cur.execute(
                "SELECT g, la, lo, hll_add_agg(hll_hash_text(u), %s, %s, %s, %s)::text "
                "FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[]) AS t(g, la, lo, u) "
                "GROUP BY 1, 2, 3",
                (
                    *params,
                    *(list(elements[c]) for c in ("user_guid", "latitude", "longitude", "userday")),
                ),
            )
            ref = {(g, la, lo): v for g, la, lo, v in cur.fetchall()}
        got = {(r.user_guid, r.latitude, r.longitude): r.userday_hll for r in data.itertuples()}
        assert got == ref, params


def test_params_validation():
    assert synth.params_bytes(11, 5, 0, 1) == (0x8B, 0x40, 0)
    assert synth.params_bytes(11, 5, -1, 1) == (0x8B, 0x7F, 160)
    assert synth.params_bytes(11, 5, 16, 0) == (0x8B, 0x05, 16)
    for bad in ((12, 5, 0, 1), (11, 5, 3, 1), (11, 5, 0, 2)):
        with pytest.raises(ValueError):
            synth.params_bytes(*bad)


@pytest.mark.slow
def test_seed_shape_through_homeloc_run_equals_truth(tmp_path):
    """``homeloc synth --shape seed`` then ``homeloc run``: every home is the truth."""
    from homeloc_tests.helpers import homeloc

    src = tmp_path / "seed.csv"
    res = homeloc("synth", "--users", "2000", "--out", str(src), "--seed", "5", "--shape", "seed")
    assert "sparse" in res.stdout
    out = tmp_path / "out"
    homeloc(
        "run", "--input", str(src), "--out", str(out), "--quiet", "--no-figures", "--no-landscape"
    )
    homes = pd.read_csv(out / "user_home_locations.csv", dtype=str, keep_default_na=False)
    truth = pd.read_csv(synth.truth_path_for(src), dtype=str, keep_default_na=False)
    merged = truth.merge(homes, on="user_guid", how="left")
    assert len(homes) == len(truth) == 2000
    assert (merged["country"] == merged["home_country"]).all()
