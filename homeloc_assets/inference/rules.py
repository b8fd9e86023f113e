"""Home rules with explicit evidence, their sensitivity, and validation on known truth.

The argmax of distinct userdays always names a home; whether that home is
*defensible* depends on thresholds (Vanhoof et al. 2018 show the choice of
criteria changes the detected home for up to ~40 % of users).  A
:class:`HomeRule` says when the evidence suffices; :func:`apply_rule` gives
every user a ``status`` and a ``reason``; :func:`sensitivity` sweeps a grid
of rules over the per-user table in one vectorised pass (never the input
again) and, with a truth table, reports accuracy per setting.

Estimator error: an EXPLICIT union is exact; a SPARSE or FULL one is an
HyperLogLog estimate with relative standard error ``1.04 / sqrt(2**log2m)``
(Flajolet et al. 2007, "HyperLogLog: the analysis of a near-optimal
cardinality estimation algorithm", section 5; postgresql-hll's README states
the same bound for its ``log2m``).  Two estimates ``a >= b`` are told apart
when ``a - b > z * sqrt(sa**2 + sb**2)``; otherwise the home is
``ambiguous``.  No Dagster here.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from homeloc_assets.inference.homes import CLASS_LOCAL, CLASS_TOURIST, CLASS_UNDETERMINED

STATUS_DETERMINED = "determined"
STATUS_UNDETERMINED = "undetermined"
STATUS_AMBIGUOUS = "ambiguous"

#: reasons, in the order they are checked (the first that applies is given)
REASON_FEW_USERDAYS = "total_userdays_below_min"
REASON_LOW_SHARE = "home_share_below_min"
REASON_LOW_MARGIN = "margin_below_min"
REASON_TIE = "tie"
REASON_WITHIN_ERROR = "within_estimator_error"

_CLASSES = np.array([CLASS_UNDETERMINED, CLASS_LOCAL, CLASS_TOURIST], dtype=object)

CLASS_DOMESTIC = "Domestic tourist"
CLASS_INTERNATIONAL = "International tourist"


@dataclass(frozen=True)
class HomeRule:
    """When the argmax home counts as evidence.

    ``min_userdays``: distinct userdays over all of the user's points;
    ``min_share``: home userdays / total userdays; ``min_margin``: home minus
    runner-up userdays; ``ambiguity_z``: how many standard errors must
    separate the top two (0 switches the check off); ``drop_ambiguous``:
    classify ambiguous users as undetermined (default: keep their argmax class,
    so the default classification equals the plain argmax).
    """

    min_userdays: float = 0.0
    min_share: float = 0.0
    min_margin: float = 0.0
    ambiguity_z: float = 1.96
    drop_ambiguous: bool = False

    def __post_init__(self) -> None:
        for name in ("min_userdays", "min_margin", "ambiguity_z"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}={value!r}: must be a number >= 0")
        if not 0.0 <= self.min_share <= 1.0:
            raise ValueError(f"min_share={self.min_share!r}: must be between 0 and 1")


def relative_error(log2m: int) -> float:
    """HyperLogLog's relative standard error for ``2**log2m`` registers."""
    return 1.04 / math.sqrt(2**log2m)


def standard_error(userdays: np.ndarray, log2m: int, explicit_max: int) -> np.ndarray:
    """Standard error of each estimate: 0 where it can only come from an EXPLICIT (exact) union.

    An EXPLICIT union holds at most ``explicit_max`` values (the parameters'
    effective explicit threshold; 0 when EXPLICIT is off, as with the seed's
    ``(11, 5, 0, 1)``) and its cardinality is an integer count.
    """
    u = np.asarray(userdays, dtype=np.float64)
    exact = (u <= explicit_max) & (u == np.floor(u))
    return np.where(exact, 0.0, relative_error(log2m) * u)


@dataclass(frozen=True)
class _Evidence:
    """The per-user arrays every rule is evaluated on."""

    total: np.ndarray
    share: np.ndarray
    margin: np.ndarray
    tie: np.ndarray
    separation: np.ndarray  # margin / sqrt(se_home^2 + se_runner^2); inf when exact
    local: np.ndarray

    @classmethod
    def of(cls, homes: pa.Table, study_code: str | None, log2m: int, explicit_max: int) -> _Evidence:
        def col(name: str) -> np.ndarray:
            return homes.column(name).to_numpy(zero_copy_only=False)

        home, runner = col("userdays").astype(np.float64), col("runner_up_userdays").astype(np.float64)
        se = np.hypot(standard_error(home, log2m, explicit_max), standard_error(runner, log2m, explicit_max))
        margin = home - runner
        with np.errstate(divide="ignore", invalid="ignore"):
            separation = np.where(se > 0, margin / se, np.where(margin > 0, np.inf, 0.0))
        share = np.nan_to_num(col("home_share").astype(np.float64), nan=0.0)
        if study_code is None:  # a region layer: no classes, only the evidence
            local = np.zeros(homes.num_rows, dtype=bool)
        else:
            local = pc.fill_null(pc.equal(homes.column("country_code"), pa.scalar(study_code)),
                                 False).to_numpy(zero_copy_only=False)
        return cls(col("total_userdays").astype(np.float64), share, margin,
                   col("tie").astype(bool), separation, local)

    def classes(self, rule: HomeRule) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(class code 0/1/2, status code 0 determined/1 undetermined/2 ambiguous, reason index)."""
        checks = [
            self.total < rule.min_userdays,
            self.share < rule.min_share,
            self.margin < rule.min_margin,
            self.tie,
            (self.separation <= rule.ambiguity_z) if rule.ambiguity_z > 0 else np.zeros_like(self.tie),
        ]
        reason = np.full(len(self.total), len(checks), dtype=np.int8)
        for i in reversed(range(len(checks))):
            reason[checks[i]] = i
        undetermined = reason < 3
        ambiguous = (reason == 3) | (reason == 4)
        # int8 throughout: int64 temporaries of every user were most of the sweep's memory
        one, two, zero = np.int8(1), np.int8(2), np.int8(0)
        status = np.where(undetermined, one, np.where(ambiguous, two, zero))
        cls = np.where(self.local, one, two)
        cls[undetermined] = 0
        if rule.drop_ambiguous:
            cls[ambiguous] = 0
        return cls, status, reason


_STATUS = np.array([STATUS_DETERMINED, STATUS_UNDETERMINED, STATUS_AMBIGUOUS], dtype=object)
_REASONS = np.array([REASON_FEW_USERDAYS, REASON_LOW_SHARE, REASON_LOW_MARGIN, REASON_TIE,
                     REASON_WITHIN_ERROR, None], dtype=object)


def apply_rule(
    homes: pa.Table, rule: HomeRule, study_code: str | None, *, log2m: int = 11,
    explicit_max: int = 160,
) -> pa.Table:
    """``homes`` (the per-user home table) plus ``status``, ``reason`` and ``classification``.

    ``log2m``/``explicit_max`` describe the input's hll parameters (see
    :func:`standard_error`); the defaults are postgresql-hll's (11, 5, -1, 1).
    ``study_code`` None (a region layer's homes): ``status`` and ``reason`` only.
    """
    ev = _Evidence.of(homes, study_code, log2m, explicit_max)
    cls, status, reason = ev.classes(rule)
    out = homes
    # the texts by an Arrow take of the few labels: no Python string per user
    added = [("status", _STATUS, status), ("reason", _REASONS, reason)]
    if study_code is not None:
        added.append(("classification", _CLASSES, cls))
    for name, labels, codes in added:
        if name in out.column_names:
            out = out.drop_columns([name])
        out = out.append_column(name, pc.take(pa.array(labels, pa.string()), pa.array(codes)))
    return out


def rule_grid(
    base: HomeRule,
    min_userdays: Sequence[float] = (0, 2, 3, 5, 10),
    min_share: Sequence[float] = (0.0, 0.3, 0.5, 0.7),
    min_margin: Sequence[float] = (0, 1, 2, 5),
) -> list[HomeRule]:
    """Every combination of the given thresholds, other fields from ``base``."""
    return [replace(base, min_userdays=float(a), min_share=float(b), min_margin=float(c))
            for a, b, c in itertools.product(min_userdays, min_share, min_margin)]


def _truth_codes(homes: pa.Table, truth: pa.Table) -> np.ndarray:
    """Truth class code per row of ``homes`` (1 Local, 2 Tourist, -1 unknown)."""
    idx = pc.index_in(homes.column("user_guid"), value_set=truth.column("user_guid").combine_chunks())
    cls = pc.take(truth.column("classification"), pc.fill_null(idx, 0))
    code = np.where(pc.equal(cls, CLASS_LOCAL).to_numpy(zero_copy_only=False), 1,
                    np.where(pc.equal(cls, CLASS_TOURIST).to_numpy(zero_copy_only=False), 2, -1))
    code[pc.is_null(idx).to_numpy(zero_copy_only=False)] = -1
    return code


def sensitivity(
    homes: pa.Table,
    study_code: str,
    rules: Sequence[HomeRule],
    chosen: HomeRule,
    *,
    log2m: int = 11,
    explicit_max: int = 160,
    truth: pa.Table | None = None,
) -> pa.Table:
    """One row per rule: how many users it classifies and how the result moves.

    Columns: the rule's thresholds, ``users``, ``classified``, ``locals``,
    ``tourists``, ``undetermined``, ``ambiguous``, ``local_tourist_ratio`` and
    ``changed_share`` (share of users whose class differs from ``chosen``'s).
    With ``truth`` (``user_guid, classification``, e.g. a synth truth file):
    ``accuracy`` (over classified users with a truth), ``undetermined_share``
    and the confusion counts ``truth_<T>_as_<C>``.
    """
    ev = _Evidence.of(homes, study_code, log2m, explicit_max)
    base_cls, _, _ = ev.classes(chosen)
    t = _truth_codes(homes, truth) if truth is not None else None
    missing = {1: 0, 2: 0}  # truth users without any home row count as undetermined
    if truth is not None:
        absent = pc.invert(pc.is_in(truth.column("user_guid"), value_set=homes.column("user_guid").combine_chunks()))
        absent_cls = truth.column("classification").filter(absent)
        missing = {1: int(pc.sum(pc.equal(absent_cls, CLASS_LOCAL)).as_py() or 0),
                   2: int(pc.sum(pc.equal(absent_cls, CLASS_TOURIST)).as_py() or 0)}
    n = len(ev.total)
    tcode = None if t is None else np.where(t > 0, t, 0).astype(np.int8)  # 0 unknown, 1, 2
    tallies = _tallies_by_cells(ev, rules, base_cls, tcode)
    if tallies is None:  # too many distinct thresholds for the cells: rule by rule
        # two rules at a time: numpy's passes over the users release the GIL, and this
        # step has the machine to itself in a run
        with ThreadPoolExecutor(max_workers=2) as pool:
            tallies = list(pool.map(lambda rule: _tally(ev, rule, base_cls, tcode), rules))
    return pa.Table.from_pylist([_sensitivity_row(rule, n, tally, missing, t is not None)
                                 for rule, tally in zip(rules, tallies, strict=True)])


@dataclass(frozen=True)
class _Tally:
    """What a rule's sensitivity row is made of: users per class, ambiguous users, users
    whose class differs from the chosen rule's, users per (truth code, class)."""

    classes: tuple[int, int, int]
    ambiguous: int
    changed: int
    confusion: np.ndarray  # [truth code 0 unknown/1 Local/2 Tourist, class 0/1/2]


def _tally(ev: _Evidence, rule: HomeRule, base_cls: np.ndarray, tcode: np.ndarray | None) -> _Tally:
    """The tally of one rule, from the per-user arrays (the reference of the cell tally)."""
    cls, status, _ = ev.classes(rule)
    counts = np.bincount(cls, minlength=3)
    conf = np.zeros((3, 3), np.int64)
    if tcode is not None:
        conf = np.bincount(tcode.astype(np.int64) * 3 + cls, minlength=9).reshape(3, 3)
    return _Tally((int(counts[0]), int(counts[1]), int(counts[2])),
                  int(np.count_nonzero(status == 2)), int(np.count_nonzero(cls != base_cls)), conf)


#: cells at most in :func:`_tallies_by_cells` (a few MB of counts)
_MAX_CELLS = 1 << 21


def _tallies_by_cells(ev: _Evidence, rules: Sequence[HomeRule], base_cls: np.ndarray,
                      tcode: np.ndarray | None) -> list[_Tally] | None:
    """Every rule's tally from one pass over the users, or None when the rules have too many
    distinct thresholds.

    A rule only compares each user's total, share, margin and separation with its
    thresholds, so a user is described for every rule at once by how many of the rules'
    distinct thresholds each value passes, its tie, whether its home is the study
    country, its class under the chosen rule and its truth code. Users are counted per
    such cell (one ``bincount``); each rule's tally is a sum over cells, exactly the
    counts of :func:`_tally` (tested equal), without the 10-odd passes over all users
    that each rule costs there.
    """
    axes = [np.unique(np.array([getattr(r, f) for r in rules], np.float64))
            for f in ("min_userdays", "min_share", "min_margin")]
    zs = np.unique(np.array([r.ambiguity_z for r in rules if r.ambiguity_z > 0], np.float64))
    n_truth = 3 if tcode is not None else 1
    dims = (*(len(a) + 1 for a in axes), len(zs) + 1, 2, 2, 3, n_truth)
    if math.prod(dims) > _MAX_CELLS:
        return None
    # a value passes threshold j of an axis (value >= threshold; NaN passes all) iff j < k
    passed = [np.searchsorted(a, v, side="right")
              for a, v in zip(axes, (ev.total, ev.share, ev.margin), strict=True)]
    within = np.searchsorted(zs, ev.separation, side="left")  # separation <= zs[j] iff j >= it
    key = np.zeros(len(ev.total), np.int64)
    for part, size in zip((*passed, within, ev.tie, ev.local, base_cls), dims, strict=False):
        key *= size
        key += part
    key *= n_truth
    if tcode is not None:
        key += tcode
    cells = np.bincount(key, minlength=math.prod(dims)).reshape(dims)

    def grid(axis: int, values: np.ndarray) -> np.ndarray:
        shape = [1] * 6
        shape[axis] = len(values)
        return values.reshape(shape)

    tie, local = grid(4, np.array([False, True])), grid(5, np.array([False, True]))
    base = np.arange(3).reshape(1, 1, 1, 1, 1, 1, 3, 1)
    out = []
    for rule in rules:
        ok = [grid(i, np.arange(len(a) + 1) > np.searchsorted(a, x))
              for i, (a, x) in enumerate(zip(axes, (rule.min_userdays, rule.min_share,
                                                    rule.min_margin), strict=True))]
        z_fail = (grid(3, np.arange(len(zs) + 1) <= np.searchsorted(zs, rule.ambiguity_z))
                  if rule.ambiguity_z > 0 else grid(3, np.zeros(len(zs) + 1, bool)))
        undetermined = ~(ok[0] & ok[1] & ok[2])
        ambiguous = ~undetermined & (tie | z_fail)
        cls = np.where(local, 1, 2) * ~(undetermined | (ambiguous & rule.drop_ambiguous))
        cls = np.broadcast_to(cls, dims[:6])[..., None, None]
        amb = np.broadcast_to(ambiguous, dims[:6])[..., None, None]
        by_class = [int(cells[np.broadcast_to(cls == c, dims)].sum()) for c in range(3)]
        conf = np.stack([(cells * (cls == c)).sum(axis=tuple(range(7))) for c in range(3)],
                        axis=1) if tcode is not None else np.zeros((3, 3), np.int64)
        out.append(_Tally(tuple(by_class), int(cells[np.broadcast_to(amb, dims)].sum()),
                          int(cells[np.broadcast_to(cls != base, dims)].sum()),
                          conf))
    return out


def _sensitivity_row(rule: HomeRule, n: int, tally: _Tally, missing: dict[int, int],
                     with_truth: bool) -> dict:
    """A rule's row of :func:`sensitivity`; truth users without a home row count as
    undetermined (``missing``: such users per truth code)."""
    locals_, tourists = tally.classes[1], tally.classes[2]
    r = {"min_userdays": rule.min_userdays, "min_share": rule.min_share,
         "min_margin": rule.min_margin, "ambiguity_z": rule.ambiguity_z,
         "drop_ambiguous": rule.drop_ambiguous, "users": n,
         "classified": locals_ + tourists, "locals": locals_, "tourists": tourists,
         "undetermined": tally.classes[0], "ambiguous": tally.ambiguous,
         "local_tourist_ratio": float(locals_ / tourists) if tourists else math.nan,
         "changed_share": float(tally.changed / n) if n else 0.0}
    if with_truth:
        conf = tally.confusion
        judged = int(conf[1:, 1:].sum())
        r["accuracy"] = float((conf[1, 1] + conf[2, 2]) / judged) if judged else math.nan
        n_known = int(conf[1:].sum()) + missing[1] + missing[2]
        r["undetermined_share"] = (float((int(conf[1:, 0].sum()) + missing[1] + missing[2])
                                         / n_known) if n_known else math.nan)
        for tc, tn in ((1, "Local"), (2, "Tourist")):
            for cc, cn in ((1, "Local"), (2, "Tourist"), (0, "undetermined")):
                r[f"truth_{tn}_as_{cn}"] = int(conf[tc, cc]) + (missing[tc] if cc == 0 else 0)
    return r


def nest_classes(classified: pa.Table, region_homes: pa.Table, region_code: str) -> pa.Table:
    """Refine Local/Tourist by a study region inside the study country.

    ``classified`` is :func:`apply_rule`'s output for the country layer (its
    ``Local`` = home in the study country); ``region_homes`` the same users'
    homes in the region layer (``user_guid, region_code``).  A determined
    user's class becomes ``Local`` when the home region is ``region_code``,
    ``Domestic tourist`` when the home country is the study country but the
    home region is another one (or none of the layer's), and
    ``International tourist`` when the home country is abroad.
    ``undetermined`` stays so: the evidence rule is the country layer's.
    """
    cls = classified.column("classification")
    idx = pc.index_in(classified.column("user_guid"),
                      value_set=region_homes.column("user_guid").combine_chunks())
    home_region = pc.take(region_homes.column("region_code"), idx)
    in_region = pc.fill_null(pc.equal(home_region, pa.scalar(str(region_code))), False)
    in_country = pc.equal(cls, CLASS_LOCAL)
    nested = pc.if_else(
        pc.equal(cls, CLASS_UNDETERMINED), pa.scalar(CLASS_UNDETERMINED),
        pc.if_else(in_country,
                   pc.if_else(in_region, pa.scalar(CLASS_LOCAL), pa.scalar(CLASS_DOMESTIC)),
                   pa.scalar(CLASS_INTERNATIONAL)))
    i = classified.column_names.index("classification")
    return classified.set_column(i, "classification", nested)


CLASSIFICATION_COLUMNS = ["user_guid", "country", "country_code", "total_userdays", "status",
                          "reason", "classification"]


def classify_batch(homes: pa.Table, info, batch_file=None, region_homes: pa.Table | None = None
                   ) -> pa.Table:
    """One batch's classification under the settings of ``info`` (a provenance ``RunInfo``).

    The home rule from its thresholds, the study country's code, and with a
    study region the nested classes: the region layer's homes of the batch are
    ``region_homes`` when given (``user_guid, region_code``, e.g. still in
    memory in the batch worker), else read from ``batch_file(asset)``, this
    batch's file of an asset.
    """
    out = with_evidence(homes, info, info.study_country_code).select(CLASSIFICATION_COLUMNS)
    if info.study_region:
        import pyarrow.parquet as pq

        from homeloc_assets.geo.layers import layer_assets

        layer, _, code = info.study_region.partition("=")
        if region_homes is None:
            region_homes = pq.read_table(batch_file(layer_assets(layer)[1]),
                                         columns=["user_guid", "region_code"])
        out = nest_classes(out, region_homes, code)
    return out


def rule_of(info) -> HomeRule:
    """The home rule a classification was made with (from its provenance ``RunInfo``)."""
    return HomeRule(min_userdays=info.min_userdays, min_share=info.min_share,
                    min_margin=info.min_margin)


def with_evidence(homes: pa.Table, info, study_code: str | None = None) -> pa.Table:
    """``homes`` (of any layer) with ``status`` and ``reason`` under ``info``'s rule
    (and ``classification`` when ``study_code`` is given)."""
    return apply_rule(homes, rule_of(info), study_code, log2m=info.hll_log2m,
                      explicit_max=info.hll_explicit_max)
