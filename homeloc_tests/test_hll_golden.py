"""The embedded engine against golden values that postgresql-hll produced (offline).

``golden/hll_golden.json`` was written by ``scripts/make_golden.py`` from a live
PostgreSQL with the hll extension.  These tests need no database: values,
cardinalities (compared exactly, so a one-ulp change of the estimator fails),
union bytes, values built element by element, and the hash functions.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from homeloc_assets import hll

GOLDEN = json.loads((Path(__file__).parent / "golden" / "hll_golden.json").read_text())
CASES = GOLDEN["cases"]
IDS = ["p{}-{}-{}-{}".format(*c["params"]) for c in CASES]


def _blob(text: str) -> bytes:
    return bytes.fromhex(text[2:])


def test_the_golden_file_covers_every_storage_type_and_the_seed_parameters():
    kinds = {hll.decode(_blob(v["value"])).storage_type for c in CASES for v in c["values"]}
    assert {hll.EXPLICIT, hll.SPARSE, hll.FULL} <= kinds
    assert [11, 5, 0, 1] in [c["params"] for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_cardinality_is_bit_for_bit_postgresqls(case):
    for item in case["values"] + case["unions"]:
        assert hll.cardinality(_blob(item["value"])) == float(item["cardinality"]), item["value"][:40]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_scalar_union_bytes_are_postgresqls(case):
    values = [_blob(v["value"]) for v in case["values"]]
    for u in case["unions"]:
        got = hll.union([values[i] for i in u["members"]])
        assert hll.to_hex(got) == u["value"], u["members"]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_vectorised_grouped_union_is_postgresqls(case, hll_kernel):
    values = [_blob(v["value"]) for v in case["values"]]
    blobs, groups = [], []
    for g, u in enumerate(case["unions"]):
        blobs += [values[i] for i in u["members"]]
        groups += [g] * len(u["members"])
    card, out = hll.grouped_union(pa.array(blobs, pa.binary()), np.array(groups), len(case["unions"]))
    assert card.tolist() == [float(u["cardinality"]) for u in case["unions"]]
    assert [hll.to_hex(b) for b in out] == [u["value"] for u in case["unions"]]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_values_built_element_by_element_are_postgresqls(case):
    for v in case["values"]:
        if v["n"] > 250:
            continue
        h = hll.empty(*case["params"])
        for x in range(v["first"], v["first"] + v["n"]):
            h = hll.add(h, hll.hash_bigint(x))
        assert hll.to_hex(h) == v["value"], (v["first"], v["n"])


def test_hash_functions_are_postgresqls():
    assert [hll.hash_bigint(x) for x, _ in GOLDEN["hash_bigint"]] == [h for _, h in GOLDEN["hash_bigint"]]
    assert [hll.hash_text(t) for t, _ in GOLDEN["hash_text"]] == [h for _, h in GOLDEN["hash_text"]]
