"""The compiled grouped-union kernel (``hll/_kernel.c``) against its numpy reference.

The reference (``_vector._estimate_exact``) is tested against PostgreSQL elsewhere (the
grouped tests there run with both kernels); here random columns of every storage type and
parameter set the kernel takes, in many group layouts, must give the same cardinalities
to the last bit and the same union bytes. Also: the kernel is built, it refuses
inconsistent buffers instead of reading outside them, and it runs in threads.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from homeloc_assets import hll
from homeloc_assets.hll import _native, _vector


def test_the_compiled_kernel_is_built():
    """`make setup` builds it; without it every run takes the slower numpy path."""
    assert _native.KERNEL is not None, "homeloc_assets/hll/_kernel.c was not built: run `make setup`"
    assert hll.kernel() == "compiled"


def _value(rng: np.random.Generator, params: hll.Params, kind: str) -> bytes:
    m, top = params.nregs, (1 << params.regwidth) - 1
    if kind == "explicit":
        n = int(rng.integers(0, max(1, min(params.effective_expthresh, 40)) + 1))
        vals = np.unique(rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64))
        return hll.encode(hll.HLL(params, hll.EXPLICIT, values=vals))
    if kind == "empty":
        return params.header(hll.EMPTY)
    fill = {"sparse": rng.uniform(0, 0.05), "full": rng.uniform(0.05, 1.0)}[kind]
    regs = np.where(rng.random(m) < fill, rng.integers(1, top + 1, m), 0).astype(np.uint8)
    value = hll.encode(hll.HLL(params, hll.SPARSE if kind == "sparse" else hll.FULL, registers=regs))
    if kind == "sparse" and not hll.inspect_many([value]).ok[0]:
        # narrow entries whose padding reads as one more (zero) entry: not a valid value
        return hll.encode(hll.HLL(params, hll.FULL, registers=regs))
    return value


def _column(rng: np.random.Generator, params: list[hll.Params], n_rows: int):
    """Rows of random kinds, each params set in its own groups; some nulls."""
    blobs, groups = [], []
    per = max(1, n_rows // 3)
    for k, pr in enumerate(params):
        kinds = ["explicit", "sparse", "full", "empty"] if pr.sparseon else ["explicit", "full", "empty"]
        for _ in range(n_rows):
            kind = kinds[int(rng.integers(len(kinds)))]
            blobs.append(None if rng.random() < 0.03 else _value(rng, pr, kind))
            groups.append(k * per + int(rng.integers(per)))
    return blobs, np.array(groups, np.int64), per * len(params)


def _both(blobs, groups, n_groups):
    col = pa.array(blobs, pa.binary())
    got = {}
    for name in ("compiled", "numpy"):
        with hll.use_kernel(name):
            card, out = hll.grouped_union_arrow(col, groups, n_groups)
            got[name] = (card, out, hll.grouped_cardinality(col, groups, n_groups))
    return got["compiled"], got["numpy"]


_PARAMS = st.builds(
    hll.Params,
    log2m=st.integers(4, 17),
    regwidth=st.integers(1, 5),
    expthresh=st.sampled_from([-1, 0, 1, 8, 32]),
    sparseon=st.integers(0, 1),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_PARAMS, min_size=1, max_size=3, unique=True), st.integers(1, 40),
       st.integers(0, 2**32 - 1))
@pytest.mark.slow
def test_compiled_equals_the_numpy_reference(params, n_rows, seed):
    rng = np.random.default_rng(seed)
    blobs, groups, n_groups = _column(rng, params, n_rows)
    (card, out, card2), (ref_card, ref_out, ref_card2) = _both(blobs, groups, n_groups)
    assert out.equals(ref_out)
    assert np.array_equal(card, ref_card, equal_nan=True)
    assert np.array_equal(card2, ref_card2, equal_nan=True)
    assert np.array_equal(card, card2, equal_nan=True)


def test_seed_shape_values_equal_the_reference():
    """(11, 5, 0, 1): SPARSE from the first element, as in the real data; many groups."""
    rng = np.random.default_rng(5)
    pr = hll.Params(11, 5, 0, 1)
    blobs = [_value(rng, pr, "sparse" if rng.random() < 0.97 else "full") for _ in range(6000)]
    groups = rng.integers(0, 1500, len(blobs))
    (card, out, card2), (ref_card, ref_out, ref_card2) = _both(blobs, groups, 1500)
    assert out.equals(ref_out) and np.array_equal(card, ref_card, equal_nan=True)
    assert np.array_equal(card2, ref_card2, equal_nan=True)
    kinds = {b[0] & 15 for b in out.to_pylist() if b}
    assert kinds == {hll.SPARSE, hll.FULL}


@pytest.mark.parametrize("params", [(11, 5, -1, 1), (12, 4, -1, 1), (4, 4, -1, 1)])
def test_sparse_or_full_at_the_cutoff(params):
    """A union stays SPARSE only while smaller than FULL: at n_filled * (log2m + w) == m * w
    it is FULL, one register fewer SPARSE (hll.c ``multiset_pack``)."""
    pr = hll.Params(*params)
    bits = pr.log2m + pr.regwidth
    at = pr.nregs * pr.regwidth // bits
    assert at * bits == pr.nregs * pr.regwidth  # these params have an exact cutoff
    rng = np.random.default_rng(2)
    blobs, groups = [], []
    for g, filled in enumerate((at - 1, at)):
        regs = np.zeros(pr.nregs, np.uint8)
        regs[rng.choice(pr.nregs, filled, replace=False)] = rng.integers(1, 1 << pr.regwidth, filled)
        half = np.zeros_like(regs)
        half[: pr.nregs // 2] = regs[: pr.nregs // 2]
        blobs += [hll.encode(hll.HLL(pr, hll.FULL, registers=regs - half)),
                  hll.encode(hll.HLL(pr, hll.FULL, registers=half))]
        groups += [g, g]
    (card, out, _), (ref_card, ref_out, _) = _both(blobs, np.array(groups), 2)
    assert out.equals(ref_out) and np.array_equal(card, ref_card)
    assert [b[0] & 15 for b in out.to_pylist()] == [hll.SPARSE, hll.FULL]


def test_output_in_many_kernel_calls_is_the_same(monkeypatch):
    """Union bytes written a few groups per call (a small output buffer) are the same bytes."""
    rng = np.random.default_rng(9)
    pr = hll.Params(11, 5, -1, 1)
    blobs = [_value(rng, pr, ["sparse", "full", "explicit"][i % 3]) for i in range(900)]
    groups = rng.integers(0, 300, len(blobs))
    col = pa.array(blobs, pa.binary())
    with hll.use_kernel("compiled"):
        card, out = hll.grouped_union_arrow(col, groups, 300)
        monkeypatch.setattr(_vector, "_OUT_BYTES", 3000)  # two FULL unions per call
        card_small, out_small = hll.grouped_union_arrow(col, groups, 300)
    assert out_small.equals(out) and np.array_equal(card_small, card, equal_nan=True)


def test_taken_rows_and_wide_indices():
    """A parsed column's ``take`` (rows reordered, repeated) and SPARSE entries whose index
    array is int32 (params whose entries are not 16 bits, mixed in one column)."""
    rng = np.random.default_rng(3)
    a, b = hll.Params(11, 5, -1, 1), hll.Params(13, 4, -1, 1)
    blobs = [_value(rng, (a, b)[i % 2], "sparse") for i in range(400)]
    parsed = hll.parse_many(pa.array(blobs, pa.binary()))
    assert parsed.s_index.dtype.itemsize == 4
    rows = rng.integers(0, len(blobs), 700)
    groups = np.where(rows % 2 == 0, rows % 50, 50 + rows % 50)
    res = {}
    for name in ("compiled", "numpy"):
        with hll.use_kernel(name):
            res[name] = hll.grouped_union_arrow(parsed.take(rows), groups, 100)
    assert res["compiled"][1].equals(res["numpy"][1])
    assert np.array_equal(res["compiled"][0], res["numpy"][0], equal_nan=True)


def test_threads_give_the_same_unions():
    """The kernel releases the GIL: unions in two threads at once equal those in one."""
    rng = np.random.default_rng(1)
    pr = hll.Params(11, 5, 0, 1)
    cols = []
    for _ in range(4):
        blobs = [_value(rng, pr, "sparse") for _ in range(3000)]
        cols.append((pa.array(blobs, pa.binary()), rng.integers(0, 800, 3000)))
    with hll.use_kernel("compiled"):
        alone = [hll.grouped_union_arrow(c, g, 800) for c, g in cols]
        with ThreadPoolExecutor(2) as pool:
            threaded = list(pool.map(lambda cg: hll.grouped_union_arrow(cg[0], cg[1], 800), cols))
    for (c1, o1), (c2, o2) in zip(alone, threaded, strict=True):
        assert o1.equals(o2) and np.array_equal(c1, c2, equal_nan=True)


_P = hll.Params(11, 5, -1, 1)


def _kernel_args(**change):
    """A valid call of ``_kernel.union_groups`` over one SPARSE row of two entries, then ``change``."""
    args = dict(
        grp_off=np.array([0, 1], np.int64), kind=np.array([0], np.uint8),
        lo=np.array([0], np.int64), hi=np.array([2], np.int64),
        s_index=np.array([3, 7], np.uint16), index_size=2, s_value=np.array([1, 4], np.uint8),
        padded=np.zeros(8, np.uint8), x_values=np.zeros(0, np.int64),
        log2m=11, regwidth=5, sparseon=1, g0=0, g1=1,
        hdr_sparse=_P.header(hll.SPARSE), hdr_full=_P.header(hll.FULL),
        reg_sum=np.zeros(1, np.int64), zeros=np.zeros(1, np.int64),
        out=np.zeros(1283, np.uint8), out_off=np.zeros(2, np.int64),
    )
    args.update(change)
    return args


def test_the_kernel_call_itself():
    """One SPARSE row: the sum, the zero count and the bytes are hll.c's."""
    a = _kernel_args()
    used = _native.KERNEL.union_groups(*a.values())
    regs = np.zeros(2048, np.uint8)
    regs[[3, 7]] = [1, 4]
    assert bytes(a["out"][:used]) == hll.encode(hll.HLL(_P, hll.SPARSE, registers=regs))
    assert list(a["out_off"]) == [0, used]
    assert a["zeros"][0] == 2046
    assert a["reg_sum"][0] == 2046 * 2**31 + 2**30 + 2**27


@pytest.mark.parametrize("log2m", [2, 4, 6])
def test_full_rows_read_and_written_eight_registers_at_a_time_or_not(log2m):
    """FULL payloads: 8 registers per regwidth bytes where m allows (log2m >= 3), else bit by
    bit (only a direct call reaches it: the estimator refuses fewer than 16 registers)."""
    from homeloc_assets.hll._format import pack_fixed

    pr = hll.Params(log2m, 5, -1, 0)
    rng = np.random.default_rng(log2m)
    regs = rng.integers(0, 32, pr.nregs).astype(np.uint8)
    payload = np.frombuffer(pack_fixed(regs, 5), np.uint8)
    a = _kernel_args(kind=np.array([1], np.uint8), lo=np.array([0], np.int64),
                     hi=np.array([0], np.int64), padded=np.concatenate([payload, np.zeros(8, np.uint8)]),
                     log2m=log2m, sparseon=0, hdr_sparse=pr.header(hll.SPARSE),
                     hdr_full=pr.header(hll.FULL), out=np.zeros(3 + len(payload), np.uint8))
    used = _native.KERNEL.union_groups(*a.values())
    assert bytes(a["out"][:used]) == pr.header(hll.FULL) + pack_fixed(regs, 5)
    assert a["zeros"][0] == np.count_nonzero(regs == 0)
    assert a["reg_sum"][0] == int(sum(2 ** (31 - int(r)) for r in regs))


@pytest.mark.parametrize("change, message", [
    (dict(hi=np.array([3], np.int64)), "row offsets outside"),
    (dict(lo=np.array([-1], np.int64)), "row offsets outside"),
    (dict(s_index=np.array([3, 2048], np.uint16)), "register index out of range"),
    (dict(s_value=np.array([1, 32], np.uint8)), "register value out of range"),
    (dict(kind=np.array([9], np.uint8)), "unknown row kind"),
    (dict(kind=np.array([1], np.uint8)), "row offsets outside"),  # FULL payload past the buffer
    (dict(grp_off=np.array([0, 5], np.int64)), "group offsets outside"),
    (dict(g1=2), "buffer sizes"),
    (dict(out=np.zeros(10, np.uint8)), "output buffer too small"),
    (dict(regwidth=6), "unsupported parameters"),
    (dict(regwidth=-3), "unsupported parameters"),
    (dict(regwidth=40), "unsupported parameters"),
    (dict(kind=np.array([1], np.uint8), lo=np.array([2**62], np.int64)), "row offsets outside"),
    (dict(index_size=8), "unsupported parameters"),
])
def test_inconsistent_buffers_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        _native.KERNEL.union_groups(*_kernel_args(**change).values())


@pytest.mark.parametrize("value, kernel, warning", [
    ("numpy", "numpy", False), ("compiled", "compiled", False), ("", "compiled", False),
    ("Fortran", "compiled", True),
])
def test_the_environment_chooses_the_kernel(value, kernel, warning):
    """``HOMELOC_HLL_KERNEL`` (read at import): numpy runs the reference; an unknown
    value warns and keeps the default."""
    code = ("import warnings; warnings.simplefilter('always')\n"
            "from homeloc_assets import hll; print(hll.kernel())")
    env = {**os.environ, "HOMELOC_HLL_KERNEL": value}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert res.stdout.strip() == kernel
    assert ("is not one of compiled, numpy" in res.stderr) == warning, res.stderr


def test_unknown_kernel_name_is_refused():
    with pytest.raises(hll.HLLError, match="unknown hll kernel"), hll.use_kernel("fortran"):
        pass


@pytest.mark.slow
def test_an_install_without_a_compiler_still_succeeds(tmp_path):
    """The kernels are optional extensions: with a compiler that fails, the wheel builds
    without them (and the engine then takes the numpy path, next test)."""
    root = Path(__file__).resolve().parents[1]
    src = tmp_path / "src"
    shutil.copytree(root / "homeloc_assets", src / "homeloc_assets",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(root / name, src / name)
    env = {**os.environ, "CC": "false", "LDSHARED": "false"}
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                          "-q", str(src), "-w", str(tmp_path / "wheel")],
                         env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    (wheel,) = (tmp_path / "wheel").glob("homeloc-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "homeloc_assets/hll/_vector.py" in names
    assert not [n for n in names if n.endswith(".so")], names


def test_without_the_compiled_kernels_the_numpy_paths_run():
    """Where the extensions cannot be imported: kernel() is numpy, unions and the reader work."""
    code = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name in ("homeloc_assets.hll._kernel", "homeloc_assets.inputs._scan"):
            raise ImportError("blocked for the test")
sys.meta_path.insert(0, Block())
from homeloc_assets import hll
from homeloc_assets.inputs import reader
assert reader._SCAN is None
h = hll.add(hll.empty(11, 5, 0, 1), hll.hash_text("a"))
card, out = hll.grouped_union([h, h, hll.add(h, hll.hash_text("b"))], [0, 0, 1])
print(hll.kernel(), card.tolist(), len(reader._scan_lines(b"a,b\\nc,d\\n")[0]))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    h = hll.add(hll.empty(11, 5, 0, 1), hll.hash_text("a"))
    with hll.use_kernel("compiled"):
        card, _ = hll.grouped_union([h, h, hll.add(h, hll.hash_text("b"))], [0, 0, 1])
    assert res.stdout.split() == ["numpy", f"[{float(card[0])!r},", f"{float(card[1])!r}]", "2"], res.stdout


_HEX_TEXT = st.one_of(
    st.binary(max_size=40).map(lambda b: "\\x" + b.hex()),
    st.binary(max_size=40).map(lambda b: "\\X" + b.hex().upper()),
    st.text(alphabet="\\xX0123456789abcdefABCDEFgz \t", max_size=12),
    st.none(),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_HEX_TEXT, max_size=30))
def test_compiled_unhex_equals_the_reference(texts):
    """``unhex_many`` with the kernel's decoder and with the numpy/binascii one: same bytes,
    same verdicts, on clean, upper-case, padded and broken texts."""
    from homeloc_assets.hll import _hex

    col = pa.array(texts, pa.string())
    got, ok = hll.unhex_many(col)
    assert _hex.KERNEL is not None
    saved, _hex.KERNEL = _hex.KERNEL, None
    try:
        ref, ref_ok = hll.unhex_many(col)
    finally:
        _hex.KERNEL = saved
    assert got.equals(ref) and np.array_equal(ok, ref_ok)


def test_unhex_rows_refuses_rows_outside_their_buffer():
    with pytest.raises(ValueError, match="do not fit"):
        _native.KERNEL.unhex_rows(np.frombuffer(b"\\x12", np.uint8), np.array([0, 9], np.int64),
                                   np.zeros(4, np.uint8))
    with pytest.raises(ValueError, match="do not fit"):  # an output too small
        _native.KERNEL.unhex_rows(np.frombuffer(b"\\x1234", np.uint8), np.array([0, 6], np.int64),
                                   np.zeros(1, np.uint8))
    with pytest.raises(ValueError, match="do not fit"):  # offsets going backwards
        _native.KERNEL.unhex_rows(np.frombuffer(b"\\x00000000", np.uint8),
                                   np.array([0, 100, 4], np.int64), np.zeros(64, np.uint8))
    assert _native.KERNEL.unhex_rows(np.frombuffer(b"\\x1g", np.uint8), np.array([0, 4], np.int64),
                                      np.zeros(1, np.uint8)) == -1


@pytest.mark.parametrize("texts", [["\\xzz"], ["\\xzz", "\\x12"], ["\\x1g", None, "\\x"]])
def test_unhex_of_clean_shaped_rows_with_bad_digits(texts):
    """Rows of clean shape whose digits are bad, alone or with good ones: null and not ok."""
    got, ok = hll.unhex_many(pa.array(texts, pa.string()))
    want = [bytes.fromhex(t[2:]) if t is not None and all(c in "0123456789abcdef" for c in t[2:])
            else None for t in texts]
    assert got.to_pylist() == want and ok.tolist() == [w is not None for w in want]
