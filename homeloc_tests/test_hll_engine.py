"""Tests of the embedded postgresql-hll engine (homeloc_assets.hll).

Three kinds: value-by-value comparison with a live PostgreSQL + hll extension
(marked ``postgres``; hlls are built inside PostgreSQL, in the spirit of the
extension's cumulative_add_*/cumulative_union_* regression vectors, which we
regenerate here instead of copying), hypothesis properties, and malformed-input
fuzzing (only HLLError, never a number for garbage).
"""

from __future__ import annotations

import random
import warnings

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from homeloc_assets import hll

PARAMS = [
    (11, 5, -1, 1),
    (10, 4, -1, 1),
    (12, 6, -1, 1),
    (14, 5, -1, 1),
    (11, 5, 0, 1),
    (11, 5, 16, 1),
    (11, 5, -1, 0),
    (4, 5, -1, 1),
    (17, 5, -1, 1),
    (8, 7, 32, 0),
]
SIZES = [0, 1, 7, 159, 160, 161, 400, 3000, 100_000]


def _close(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if np.isnan(a) or np.isnan(b):
        return bool(np.isnan(a) and np.isnan(b))
    return a == b  # the same double as PostgreSQL, to the last bit


def _q(cur, sql, args=()):
    cur.execute(sql, args)
    return cur.fetchall()


@pytest.fixture(scope="module")
def pgc(pg_dsn):
    import psycopg2

    conn = psycopg2.connect(pg_dsn)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("SET client_min_messages = error")
    yield cur
    conn.close()


# ---------------------------------------------------------------- PostgreSQL


@pytest.mark.postgres
@pytest.mark.parametrize("params", PARAMS)
def test_cardinality_and_roundtrip_vs_pg(pgc, params):
    ps = ",".join(map(str, params))
    for n in SIZES:
        if n > 3000 and params[0] not in (11, 14):
            continue
        rows = _q(
            pgc,
            f"WITH h AS (SELECT hll_add_agg(hll_hash_bigint(x), {ps}) v FROM generate_series(%s, %s) x) "
            "SELECT v::text, hll_cardinality(v), hll_print(v) FROM h",
            (n * 13, n * 13 + n - 1),
        )
        text, card, printed = rows[0]
        if text is None:
            assert n == 0
            continue
        assert _close(hll.cardinality(text), card), (params, n)
        b = bytes.fromhex(text[2:])
        assert hll.encode(hll.decode(b)) == b
        assert hll.describe(b) == printed
        assert hll.to_hex(b) == text


@pytest.mark.postgres
@pytest.mark.parametrize("params", PARAMS[:7])
def test_union_add_vs_pg(pgc, params):
    ps = ",".join(map(str, params))
    rnd = random.Random(hash(params) & 0xFFFF)
    for _ in range(5):
        sizes = [rnd.choice([0, 1, 3, 20, 80, 150, 400, 3000]) for _ in range(rnd.choice([1, 2, 4]))]
        base = rnd.randrange(10_000)
        pgc.execute(
            "CREATE TEMP TABLE IF NOT EXISTS hu (g int, v hll); TRUNCATE hu; "
            f"INSERT INTO hu SELECT g, (SELECT coalesce(hll_add_agg(hll_hash_bigint(x), {ps}), hll_empty({ps})) "
            "FROM generate_series(%s, %s + s) x WHERE s > 0) FROM unnest(%s::int[]) WITH ORDINALITY AS u(s, g)",
            (base, base, sizes),
        )
        vals = [r[0] for r in _q(pgc, "SELECT v::text FROM hu ORDER BY g")]
        ub, uc = _q(pgc, "SELECT hll_union_agg(v)::text, hll_cardinality(hll_union_agg(v)) FROM hu")[0]
        mine = hll.union(vals)
        assert hll.to_hex(mine) == ub
        assert _close(hll.cardinality(mine), uc)
        h = rnd.getrandbits(64) - 2**63
        u2, a = _q(
            pgc,
            "SELECT hll_union(%s::hll, %s::hll)::text, hll_add(%s::hll, (%s::bigint)::hll_hashval)::text",
            (vals[0], vals[-1], vals[0], h),
        )[0]
        assert hll.to_hex(hll.union([vals[0], vals[-1]])) == u2
        assert hll.to_hex(hll.add(vals[0], h)) == a


@pytest.mark.postgres
def test_cumulative_add_sequence_vs_pg(pgc):
    """Like cumulative_add_*: add one value at a time and compare every step."""
    for params in [(11, 5, -1, 1), (5, 5, 4, 1), (6, 4, 0, 0)]:
        ps = ",".join(map(str, params))
        rows = _q(
            pgc,
            f"SELECT x, (hll_add_agg(hll_hash_bigint(x), {ps}) OVER (ORDER BY x))::text FROM generate_series(1, 400) x",
        )
        cur = hll.empty(*params)
        for x, text in rows:
            cur = hll.add(cur, hll.hash_bigint(x))
            assert hll.to_hex(cur) == text, (params, x)


@pytest.mark.postgres
def test_empty_vs_pg(pgc):
    for p in [(), (10,), (10, 4), (10, 4, 32), (10, 4, 32, 0), (17, 7, 0, 0), (0, 1, -1, 1), (11, 5, 8192, 1)]:
        (text,) = _q(pgc, f"SELECT hll_empty({','.join(map(str, p))})::text")[0]
        assert hll.to_hex(hll.empty(*p)) == text


@pytest.mark.postgres
def test_hashes_vs_pg(pgc):
    seeds = [0, 1, 42, 2**31 - 1, -1, -(2**31)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for v in [0, 1, -1, 2**63 - 1, -(2**63), 123456789, -987654321]:
            vi, vs = max(min(v, 2**31 - 1), -(2**31)), max(min(v, 2**15 - 1), -(2**15))
            for s in seeds:
                got = _q(
                    pgc,
                    "SELECT hll_hash_bigint((%s)::bigint, (%s)::int)::text::bigint, hll_hash_integer((%s)::int, (%s)::int)::text::bigint, "
                    "hll_hash_smallint((%s)::smallint, (%s)::int)::text::bigint",
                    (v, s, vi, s, vs, s),
                )[0]
                assert got == (hll.hash_bigint(v, s), hll.hash_integer(vi, s), hll.hash_smallint(vs, s))
        for t in ["", "a", "héllo wörld ✓ 😀", "日本語テキスト", "x" * 1000]:
            for s in seeds[:5]:
                raw = t.encode("utf-8")[::-1] + b"\x00\xff"
                got = _q(
                    pgc,
                    "SELECT hll_hash_text(%s, (%s)::int)::text::bigint, hll_hash_bytea(%s, (%s)::int)::text::bigint, "
                    "hll_hash_boolean(true, (%s)::int)::text::bigint, hll_hash_boolean(false, (%s)::int)::text::bigint",
                    (t, s, raw, s, s, s),
                )[0]
                assert got == (
                    hll.hash_text(t, s),
                    hll.hash_bytea(raw, s),
                    hll.hash_boolean(True, s),
                    hll.hash_boolean(False, s),
                )


@pytest.mark.postgres
@pytest.mark.parametrize("params", [(11, 5, -1, 1), (10, 4, 64, 0), (12, 6, -1, 1)])
def test_grouped_union_vs_pg(pgc, params, hll_kernel):
    """Many groups with a mix of EMPTY, EXPLICIT, SPARSE and FULL inputs, vs hll_union_agg GROUP BY."""
    ps = ",".join(map(str, params))
    pgc.execute(
        "CREATE TEMP TABLE IF NOT EXISTS gu (g int, v hll); TRUNCATE gu; "
        f"INSERT INTO gu SELECT g, CASE WHEN k = 0 THEN hll_empty({ps}) ELSE "
        f"(SELECT hll_add_agg(hll_hash_bigint(x * 7919 + g % 13), {ps}) FROM generate_series(1, k) x) END "
        "FROM (SELECT (random() * 400)::int g, "
        "CASE WHEN r < 0.05 THEN 0 WHEN r < 0.8 THEN 1 + (random() * 20)::int "
        "WHEN r < 0.95 THEN 100 + (random() * 300)::int ELSE 2000 + (random() * 3000)::int END k "
        "FROM (SELECT random() r FROM generate_series(1, 1500)) s) t"
    )
    rows = _q(pgc, "SELECT g, v::text FROM gu")
    expected = _q(pgc, "SELECT g, hll_union_agg(v)::text, hll_cardinality(hll_union_agg(v)) FROM gu GROUP BY g")
    arr, ok = hll.unhex_many(pa.array([r[1] for r in rows]))
    assert ok.all()
    card, outs = hll.grouped_union(arr, np.array([r[0] for r in rows]), 401)
    card2 = hll.grouped_cardinality(arr, np.array([r[0] for r in rows]), 401)
    seen = set()
    for g, text, c in expected:
        seen.add(g)
        assert hll.to_hex(outs[g]) == text, g
        assert _close(card[g], c) and _close(card2[g], c), (g, card[g], c)
    for g in set(range(401)) - seen:
        assert outs[g] is None and np.isnan(card[g])


@pytest.mark.postgres
def test_grouped_many_estimator_groups_vs_pg(pgc, hll_kernel):
    """Thousands of estimator groups (several scratch chunks) of every composition vs PostgreSQL:
    one SPARSE row + EXPLICIT rows, several SPARSE rows, FULL + SPARSE + EXPLICIT, several FULL,
    EXPLICIT rows whose union passes the threshold, and overlapping values across rows."""
    pgc.execute(
        "CREATE TEMP TABLE IF NOT EXISTS gm (g int, v hll); TRUNCATE gm; "
        "INSERT INTO gm SELECT g, (SELECT hll_add_agg(hll_hash_bigint(x)) "
        "FROM generate_series(b, b + k - 1) x) FROM ("
        "  SELECT g, j, (g * 37 + j * 11) % 500 b, CASE "
        "    WHEN j = 0 AND g % 7 = 0 THEN 900 + g % 400 "  # FULL
        "    WHEN j = 0 THEN 20 + g % 200 "  # SPARSE or EXPLICIT
        "    WHEN j = 1 AND g % 5 = 0 THEN 150 + g % 60 "  # second compressed row
        "    WHEN j = 1 AND g % 11 = 0 THEN 1000 "  # second FULL
        "    ELSE 1 + (g + j) % 15 END k "  # small EXPLICIT rows
        "  FROM generate_series(0, 4999) g, generate_series(0, 3) j) s"
    )
    rows = _q(pgc, "SELECT g, v::text FROM gm ORDER BY random()")
    expected = _q(pgc, "SELECT g, hll_union_agg(v)::text, hll_cardinality(hll_union_agg(v)) FROM gm GROUP BY g")
    arr, ok = hll.unhex_many(pa.array([r[1] for r in rows]))
    assert ok.all()
    groups = np.array([r[0] for r in rows])
    card, outs = hll.grouped_union(arr, groups, 5000)
    card2 = hll.grouped_cardinality(arr, groups, 5000)
    types = set()
    for g, text, c in expected:
        types.add(text[3])
        assert hll.to_hex(outs[g]) == text, g
        assert card[g] == c and card2[g] == c, (g, card[g], card2[g], c)
    assert types >= {"2", "3", "4"}  # EXPLICIT, SPARSE and FULL results


@pytest.fixture(scope="module")
def pg_samples(pgc):
    """hlls of every storage type and several parameter sets, produced by PostgreSQL once."""
    out = []
    for params in PARAMS:
        ps = ",".join(map(str, params))
        for n in [0, 1, 5, 161, 700, 5000]:
            rows = _q(
                pgc,
                f"SELECT coalesce(hll_add_agg(hll_hash_bigint(x), {ps}), hll_empty({ps}))::text "
                "FROM generate_series(1, %s) x",
                (n,),
            )
            out.append(bytes.fromhex(rows[0][0][2:]))
    out.append(bytes.fromhex("108b7f"))  # UNDEFINED
    return out


@pytest.mark.postgres
def test_roundtrip_and_mutation_fuzz_of_pg_values(pg_samples):
    rnd = random.Random(7)
    ins = hll.inspect_many(pg_samples)
    assert ins.ok.all()
    for b in pg_samples:
        assert hll.encode(hll.decode(b)) == b
        for _ in range(30):
            m = bytearray(b)
            op = rnd.randrange(3)
            if op == 0 and m:
                m[rnd.randrange(len(m))] ^= 1 << rnd.randrange(8)
            elif op == 1:
                del m[rnd.randrange(len(m)) :]
            else:
                m += bytes([rnd.randrange(256)])
            _decode_or_hllerror(bytes(m))


# ---------------------------------------------------------------- properties

_params_st = st.sampled_from([(11, 5, -1, 1), (6, 4, 8, 1), (5, 3, 0, 0), (8, 5, -1, 0), (4, 6, 2, 1)])


@st.composite
def _hll_st(draw, params):
    kind = draw(st.sampled_from(["empty", "small", "mid", "big"]))
    n = {"empty": 0, "small": draw(st.integers(1, 8)), "mid": draw(st.integers(9, 200)), "big": draw(st.integers(200, 1500))}[kind]
    base = draw(st.integers(0, 300))
    h = hll.empty(*params)
    for v in range(base, base + n):
        h = hll.add(h, hll.hash_bigint(v))
    return h


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_union_algebra(data):
    params = data.draw(_params_st)
    a, b, c = (data.draw(_hll_st(params)) for _ in range(3))
    assert hll.union([a, b]) == hll.union([b, a])
    assert hll.union([hll.union([a, b]), c]) == hll.union([a, hll.union([b, c])]) == hll.union([a, b, c])
    assert hll.union([a, a]) == hll.union([a])
    assert hll.union([a, hll.empty(*params)]) == hll.union([a])
    assert hll.union([]) is None


@settings(max_examples=60, deadline=None)
@given(st.sets(st.integers(-(2**63), 2**63 - 1), max_size=160), st.sets(st.integers(-(2**63), 2**63 - 1), max_size=160))
def test_explicit_counts_exactly(xs, ys):
    def build(s):
        h = hll.empty()
        for v in s:
            h = hll.add(h, v)
        return h

    u = hll.union([build(xs), build(ys)])
    n = len(xs | ys)
    if n <= 160:
        assert hll.decode(u).storage_type in (hll.EXPLICIT, hll.EMPTY)
        assert hll.cardinality(u) == n
    card, outs = hll.grouped_union([build(xs), build(ys)], [0, 0])
    assert outs[0] == u and card[0] == hll.cardinality(u)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.data())
@pytest.mark.slow
def test_grouped_equals_scalar(hll_kernel, data):
    params = data.draw(_params_st)
    blobs = [data.draw(_hll_st(params)) for _ in range(data.draw(st.integers(1, 8)))]
    groups = [data.draw(st.integers(0, 2)) for _ in blobs]
    card, outs = hll.grouped_union(blobs, groups, 3)
    for g in range(3):
        mem = [b for b, gg in zip(blobs, groups, strict=True) if gg == g]
        u = hll.union(mem)
        assert outs[g] == u
        if u is None:
            assert np.isnan(card[g])
        else:
            assert _close(card[g], hll.cardinality(u))


@st.composite
def _explicit_st(draw, params):
    """EXPLICIT hll of arbitrary (not hashed) int64 values, possibly tiny ones."""
    p = hll.Params(*params)
    lim = max(0, min(p.effective_expthresh, 12))
    vals = draw(st.sets(st.one_of(st.integers(-5, 5), st.integers(-(2**63), 2**63 - 1)), max_size=lim))
    h = hll.empty(*params)
    for v in vals:
        h = hll.add(h, v)
    return h


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.data())
@pytest.mark.slow
def test_grouped_many_groups_equals_scalar(hll_kernel, data):
    """Many rows over many (sparse, possibly huge) group ids: every composition of a group vs the scalar union."""
    params = data.draw(_params_st)
    pool = [data.draw(_hll_st(params)) for _ in range(data.draw(st.integers(1, 5)))]
    pool += [data.draw(_explicit_st(params)) for _ in range(data.draw(st.integers(1, 6)))]
    n = data.draw(st.integers(1, 40))
    blobs = [pool[data.draw(st.integers(0, len(pool) - 1))] for _ in range(n)]
    ids = data.draw(st.lists(st.integers(0, 2**21), min_size=1, max_size=6, unique=True))
    groups = [ids[data.draw(st.integers(0, len(ids) - 1))] for _ in blobs]
    n_groups = max(ids) + 1
    try:
        card, outs = hll.grouped_union(blobs, groups, n_groups)
    except hll.HLLError:
        # only for estimates with fewer than 16 registers, like hll_cardinality
        assert params[0] < 4
        return
    card2 = hll.grouped_cardinality(blobs, groups, n_groups)
    for g in ids:
        u = hll.union([b for b, gg in zip(blobs, groups, strict=True) if gg == g])
        assert outs[g] == u
        if u is None:
            assert np.isnan(card[g]) and np.isnan(card2[g])
        else:
            c = hll.cardinality(u)
            assert _close(card[g], c) and _close(card2[g], c)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_grouped_small_chunks_and_wide_scratch_equal_scalar(monkeypatch, numpy_kernel, data):
    """The numpy reference's chunked estimator with one group per chunk and the uint64 scratch give the same results."""
    from homeloc_assets.hll import _vector

    params = data.draw(st.sampled_from([(11, 5, -1, 1), (6, 4, 8, 1), (8, 5, -1, 0)]))
    pool = [data.draw(_hll_st(params)) for _ in range(4)] + [data.draw(_explicit_st(params)) for _ in range(3)]
    blobs = [pool[data.draw(st.integers(0, len(pool) - 1))] for _ in range(data.draw(st.integers(1, 25)))]
    groups = [data.draw(st.integers(0, 4)) for _ in blobs]
    ref_card, ref_outs = hll.grouped_union(blobs, groups, 5)
    with monkeypatch.context() as mp:
        mp.setattr(_vector, "_SCRATCH_REGS", 1)
        mp.setattr(_vector, "_NARROW_MAX", 0)
        card, outs = hll.grouped_union(blobs, groups, 5)
    assert outs == ref_outs
    assert all(_close(a, b) for a, b in zip(card.tolist(), ref_card.tolist(), strict=True))
    for g in range(5):
        u = hll.union([b for b, gg in zip(blobs, groups, strict=True) if gg == g])
        assert outs[g] == u


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.data())
@pytest.mark.slow
def test_parsed_take_equals_parsing_the_taken_bytes(hll_kernel, data):
    """``parse_many(...).take(rows)`` (any order, repeats) gives the same verdicts, unions and
    estimates as parsing the bytes of those rows: two params sets, nulls, invalid rows."""
    pa_, pb_ = data.draw(st.lists(_params_st, min_size=2, max_size=2, unique=True))
    pool = [data.draw(_hll_st(pr)) for pr in (pa_, pb_) for _ in range(data.draw(st.integers(1, 4)))]
    pool += [data.draw(_explicit_st(pa_)) for _ in range(data.draw(st.integers(0, 3)))]
    pool += [None, b"\x13\x8b\x7f\x00"]  # a null and an invalid SPARSE value
    blobs = [pool[data.draw(st.integers(0, len(pool) - 1))] for _ in range(data.draw(st.integers(0, 30)))]
    col = pa.array(blobs, pa.binary())
    parsed = hll.parse_many(col)
    assert np.array_equal(parsed.inspect().ok, hll.inspect_many(col).ok)
    rows = data.draw(st.lists(st.integers(0, max(0, len(blobs) - 1)), max_size=40)) if blobs else []
    taken = parsed.take(np.array(rows, np.int64))
    again = col.take(pa.array(rows, pa.int64()))
    a, b = taken.inspect(), hll.inspect_many(again)
    assert np.array_equal(a.ok, b.ok) and np.array_equal(a.params, b.params)
    assert np.array_equal(a.storage_type, b.storage_type) and list(a.reason) == list(b.reason)
    # groups never mix params: a's rows in groups 0..2, b's in 3..5
    code_a = hll.Params(*pa_).header(hll.EMPTY)[1:]
    groups = np.array([data.draw(st.integers(0, 2)) + (0 if blobs[r] is None or blobs[r][1:3] == code_a
                                                       else 3) for r in rows], np.int64)
    ok = np.asarray(b.ok) | np.array([blobs[r] is None for r in rows], bool)
    sub = np.flatnonzero(ok)  # only valid rows (an invalid one raises, both ways)
    for view in (taken.take(sub), hll.parse_many(again.take(pa.array(sub, pa.int64())))):
        try:
            card, outs = hll.grouped_union_arrow(view, groups[sub], 6)
        except hll.HLLError:
            assert min(pa_[0], pb_[0]) < 4
            return
        ref_card, ref_outs = hll.grouped_union_arrow(again.take(pa.array(sub, pa.int64())),
                                                     groups[sub], 6)
        assert outs.equals(ref_outs)
        assert np.array_equal(card, ref_card, equal_nan=True)
        assert np.array_equal(hll.grouped_cardinality(view, groups[sub], 6), ref_card,
                              equal_nan=True)


def test_grouped_explicit_values_equal_in_their_high_bits(hll_kernel):
    """Values that differ only in their low bits, in unsorted row order: the exact fallback."""
    n_groups = 1 << 20
    rows = [[10, 12], [3, 10], [11], [-1, 0], [1 << 40]]
    blobs = []
    for vals in rows:
        h = hll.empty()
        for v in vals:
            h = hll.add(h, v)
        blobs.append(h)
    groups = [5, 5, 5, n_groups - 1, n_groups - 1]
    card, outs = hll.grouped_union(blobs, groups, n_groups)
    assert card[5] == 4 and card[n_groups - 1] == 3
    assert outs[5] == hll.union(blobs[:3]) and outs[n_groups - 1] == hll.union(blobs[3:])


def _decode_or_hllerror(b: bytes) -> None:
    try:
        h = hll.decode(b)
    except hll.HLLError:
        ok_scalar = False
    else:
        ok_scalar = True
        # PostgreSQL ignores the reserved top bit of header byte 2 and writes it as 0
        assert hll.encode(h) == b[:2] + bytes([b[2] & 0x7F]) + b[3:]
    ins = hll.inspect_many([b])
    assert bool(ins.ok[0]) == ok_scalar, (b.hex(), ins.reason[0])
    assert (ins.reason[0] is None) == ok_scalar
    if ok_scalar:
        try:
            c = hll.cardinality(b)
        except hll.HLLError:
            return  # e.g. estimate with fewer than 16 registers
        assert c is None or isinstance(c, float)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40))
def test_fuzz_random_bytes(b):
    _decode_or_hllerror(b)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([0x11, 0x12, 0x13, 0x14, 0x10]), st.integers(0, 255), st.integers(0, 255), st.binary(max_size=300))
def test_fuzz_plausible_headers(t, b1, b2, payload):
    _decode_or_hllerror(bytes([t, b1, b2]) + payload)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.text(max_size=12), st.text("\\x0123456789abcdefABCDEF g", max_size=12)), max_size=10))
def test_fuzz_unhex_many(texts):
    arr, ok = hll.unhex_many(pa.array(texts, type=pa.string()))
    assert len(arr) == len(texts)
    for t, good, out in zip(texts, ok, arr.to_pylist(), strict=True):
        try:
            expect = None if t is None else hll._format.as_bytes(t)
        except hll.HLLError:
            expect = None
        if t is not None and expect is not None and t.strip(" \t\n\r\v\f") != t.strip():
            continue  # unicode whitespace: arrow and python strip differently
        assert bool(good) == (expect is not None), t
        assert out == expect


# ---------------------------------------------------------------- malformed input


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("\\x12", "truncated"),
        ("12ab", "hex text"),
        ("\\x1g8b7f", "hex text"),
        ("\\x118b7", "odd"),
        (b"\x21\x8b\x7f", "schema version 2"),
        (b"\x17\x8b\x7f", "unknown hll type 7"),
        (b"\x12\x8b\x7f" + b"\x00" * 19, "truncated EXPLICIT value"),
        (b"\x12\x8b\x7f" + (2).to_bytes(8, "big") + (1).to_bytes(8, "big"), "ascending"),
        # PostgreSQL 2.16 accepts EMPTY/EXPLICIT with any log2m/regwidth and ignores the
        # reserved bit (test_real_hll); a value with registers must fit its memory
        (b"\x13\x92\x7f", "log2m 18"),
        (b"\x14\x8b\x7f" + b"\x00" * 10, "FULL size"),
        (b"\x14\xc4\x7f" + b"\xff" * 14, "register value 127 out of range"),
        (b"\x13\x8b\x7f" + b"\x00\x00", "register value 0"),
        (b"\x11\x8b\x7f\x00", "exactly 3 bytes"),
        (12, "expected bytes"),
    ],
)
def test_malformed_messages(value, words):
    with pytest.raises(hll.HLLError, match=words):
        hll.decode(value)


def test_errors_are_valueerrors_and_params_checked():
    assert issubclass(hll.HLLError, ValueError)
    for bad in [(18, 5, -1, 1), (11, 8, -1, 1), (11, 0, -1, 1), (11, 5, 3, 1), (11, 5, 32768, 1), (11, 5, -1, 2)]:
        with pytest.raises(hll.HLLError):
            hll.empty(*bad)
    with pytest.raises(hll.HLLError, match="different parameters"):
        hll.union([hll.empty(11), hll.empty(12)])
    with pytest.raises(hll.HLLError, match="group 1"):
        hll.grouped_cardinality([hll.empty(11), hll.empty(11), hll.empty(12)], [0, 1, 1])
    with pytest.raises(hll.HLLError, match="row 1"):
        hll.grouped_cardinality([hll.empty(11), b"\x17\x8b\x7f"], [0, 0])
    with pytest.raises(hll.HLLError, match="too small"):
        hll.cardinality(hll.add(hll.empty(3, 5, 0), 12345))


def test_hex_and_params_code():
    e = hll.empty()
    assert hll.to_hex(e) == "\\x118b7f"
    assert hll.decode("  \\X118B7F\n").params == hll.Params()
    code = int(hll.inspect_many([e]).params[0])
    assert hll.params_of_code(code) == hll.Params(11, 5, -1, 1)
    assert hll.cardinality(e) == 0.0
    assert hll.cardinality(bytes.fromhex("108b7f")) is None
    res = hll.inspect_many(pa.array([e, None, b"\x17\x8b\x7f"], type=pa.binary()))
    assert res.ok.tolist() == [True, False, False]
    assert res.reason[2] == "unknown hll type 7"
    assert res.storage_type.tolist() == [hll.EMPTY, -1, -1]


def test_full_packing_equals_the_bit_by_bit_reference():
    """``_pack_full`` (eight registers as one integer) gives the bytes of the plain bit stream."""
    from homeloc_assets.hll._vector import _pack_full

    rng = np.random.default_rng(0)
    for w in range(1, 8):
        for m in (4, 8, 16, 2048, 1 << 14):
            regs = rng.integers(0, 1 << w, (3, m)).astype(np.uint8)
            ref = np.packbits(np.unpackbits(regs[:, :, None], axis=2)[:, :, 8 - w :].reshape(3, m * w), axis=1)
            assert np.array_equal(_pack_full(regs, w), ref), (w, m)
