"""Over all batches: the Local/Tourist classification and the export files."""


from pathlib import Path

import dagster as dg
import geopandas as gpd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from homeloc_assets.atomic import atomic_path, remove_dead_staged, staged_path
from homeloc_assets.batch_runner import read_stats
from homeloc_assets.catalog import Catalog
from homeloc_assets.defs.resources import HomelocConfig
from homeloc_assets.exports import global_line_offsets, write_exports
from homeloc_assets.geo import resolve_country
from homeloc_assets.geo.layers import layer_assets
from homeloc_assets.inference import CLASS_LOCAL, CLASS_TOURIST, CLASS_UNDETERMINED
from homeloc_assets.inference.rules import (
    CLASS_DOMESTIC,
    CLASS_INTERNATIONAL,
    classify_batch,
    with_evidence,
)
from homeloc_assets.layout import Layout
from homeloc_assets.names import (
    COUNTRIES,
    HOMELOC_EXPORTS,
    REJECTED_ROWS,
    USER_CLASSIFICATION,
    USER_COUNTRY_USERDAYS,
    USER_HOME_LOCATIONS,
    USER_LOCATIONS,
)
from homeloc_assets.provenance import InputInfo, RunInfo, read_run_info
from homeloc_assets.publish import new_generation_id
from homeloc_assets.tables import PARQUET_COMPRESSION, PartitionedTables


class RejectShareError(Exception):
    """Too many rows were rejected to trust the result."""


class ImplausibleInputError(Exception):
    """Too many points fall in no country: the coordinates are likely wrong."""


def classification_path(config: HomelocConfig) -> Path:
    """Where ``user_classification`` keeps its table (the IO manager's file)."""
    return config.layout.classification


#: run tag of ``homeloc run``: the plans (comma-separated) its classification covers
DATASET_TAG = "homeloc/plans"


def dataset_plans(context: dg.AssetExecutionContext, config: HomelocConfig) -> list[str] | None:
    """The plans a new classification covers: the run's tag, else the catalog's data set."""
    tag = context.run.tags.get(DATASET_TAG)
    if tag:
        return [p for p in tag.split(",") if p]
    return Catalog(config.storage_dir).dataset()


def select_batches(config: HomelocConfig, parts: PartitionedTables,
                   plan_ids: list[str] | tuple[str, ...] | None) -> PartitionedTables:
    """The partitions of ``parts`` that belong to ``plan_ids`` (Failure when one is missing)."""
    try:
        keys = Catalog(config.storage_dir).dataset_keys(parts.keys(), plan_ids)
    except KeyError as exc:
        raise dg.Failure(str(exc).strip("'\"")) from None
    if not keys:
        raise dg.Failure("no user batches to classify")
    return parts.subset(keys)


def classified_batches(config: HomelocConfig, value) -> PartitionedTables:
    """The partitions of ``value`` that the current classification covers (its RunInfo)."""
    info = read_run_info(classification_path(config))
    return select_batches(config, _as_partitioned(value), info.plan_ids)


def publication_dir(config: HomelocConfig) -> Path:
    """The generation folder the current classification's files go to (not yet published)."""
    info = read_run_info(classification_path(config))
    if not info.generation:
        raise dg.Failure("user_classification was made by an older homeloc: materialize it again")
    return config.settings.output_layout.generation(info.generation)


def batch_stats(config: HomelocConfig, keys: list[str]) -> dict[str, dict]:
    """The counts of every batch in ``keys`` (all must be finished)."""
    out = {}
    for key in keys:
        s = read_stats(config.layout, key)
        if s is None:
            raise dg.Failure(f"batch {key} has no results yet: materialize it first")
        out[key] = s
    return out


@dg.asset(
    name=USER_CLASSIFICATION,
    group_name="results",
    kinds={"pyarrow", "parquet"},
    automation_condition=dg.AutomationCondition.eager(),
    ins={"user_home_locations": dg.AssetIn(USER_HOME_LOCATIONS), "countries": dg.AssetIn(COUNTRIES)},
    check_specs=[
        dg.AssetCheckSpec("no_user_twice", asset=USER_CLASSIFICATION,
                          description="Each user appears once over all batches."),
        dg.AssetCheckSpec("reject_share_below_limit", asset=USER_CLASSIFICATION,
                          description="Rejected rows stay below HOMELOC_MAX_REJECT_SHARE."),
    ],
    description=(
        "Every user with a home: `Local` if the home is the study country (HOMELOC_STUDY_COUNTRY), "
        "else `Tourist`; `undetermined` below HOMELOC_MIN_USERDAYS distinct userdays."
    ),
)
def user_classification(
    context: dg.AssetExecutionContext,
    homeloc: HomelocConfig,
    user_home_locations: PartitionedTables,
    countries: gpd.GeoDataFrame,
):
    """Classify each user's home against the study country, batch by batch."""
    homes = select_batches(homeloc, _as_partitioned(user_home_locations),
                           dataset_plans(context, homeloc))
    stats = batch_stats(homeloc, homes.keys())
    rows = sum(s["rows"] for s in stats.values())
    rejected = sum(s["rejected"] for s in stats.values())
    share = rejected / (rows + rejected) if rows + rejected else 0.0
    if share > homeloc.max_reject_share:
        where, top = write_stopped_rejects(homeloc, homes.keys(), stats)
        raise RejectShareError(
            f"{rejected} of {rows + rejected} rows rejected ({share:.2%}) — above the limit of "
            f"{homeloc.max_reject_share:.2%}; most common reasons: {top}; all rejected rows: "
            f"{where} (raise --max-reject-share to accept)"
        )
    check_no_country_share(homeloc, stats, countries)
    check_input_grouping(homeloc, stats)
    settings = homeloc.settings
    region = settings.study_region_spec
    study = region[1] if region and region[0] == "country" else homeloc.study_country
    name, code = resolve_country(countries, study)
    info = run_info(homeloc, name, code, stats, new_generation_id(context.run.run_id))
    target = classification_path(homeloc)
    counts = {CLASS_LOCAL: 0, CLASS_TOURIST: 0, CLASS_UNDETERMINED: 0, CLASS_DOMESTIC: 0,
              CLASS_INTERNATIONAL: 0}
    n_users = 0
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_staged(target.parent, target.stem)  # left by a killed run
    staged = staged_path(target.parent, target.stem)
    writer = None
    try:
        def classify(key: str, t: pa.Table) -> pa.Table:
            return classify_batch(t, info, lambda asset, k=key: homeloc.layout.table(asset, k))

        # the next batch is read and classified while this one is written
        for c in homes.map_ahead(classify):
            if writer is None:
                # one row per user: a dictionary of the ids is built and dropped, wasted
                writer = pq.ParquetWriter(str(staged), info.attach(c.schema),
                                          compression=PARQUET_COMPRESSION,
                                          use_dictionary=[n for n in c.column_names
                                                          if n != "user_guid"])
            writer.write_table(c)
            for item in pc.value_counts(c.column("classification")).to_pylist():
                counts[item["values"]] += int(item["counts"])
            n_users += c.num_rows
        if writer is None:
            raise dg.Failure("no user batches to classify")
        writer.close()
    except BaseException:
        if writer is not None:
            writer.close()
        staged.unlink(missing_ok=True)
        raise
    twice = users_seen_twice(homes, stats)
    users_total = sum(s["users"] for s in stats.values())
    yield dg.Output(
        staged,
        metadata={
            "study_country": info.study_label,
            "users": users_total,
            "users_with_home": n_users,
            "locals": counts[CLASS_LOCAL],
            "tourists": counts[CLASS_TOURIST] + counts[CLASS_DOMESTIC] + counts[CLASS_INTERNATIONAL],
            **({"domestic_tourists": counts[CLASS_DOMESTIC],
                "international_tourists": counts[CLASS_INTERNATIONAL],
                "study_region": info.study_region} if info.study_region else {}),
            "undetermined": counts[CLASS_UNDETERMINED],
            "users_without_home": users_total - n_users,
            "rejected_rows": rejected,
            "min_userdays": homeloc.min_userdays,
            "min_share": homeloc.min_share,
            "min_margin": homeloc.min_margin,
        },
    )
    yield dg.AssetCheckResult(
        check_name="no_user_twice", passed=twice == 0,
        metadata={"users": n_users, "users_seen_twice": twice},
    )
    yield dg.AssetCheckResult(
        check_name="reject_share_below_limit", passed=share <= homeloc.max_reject_share,
        metadata={"rejected": rejected, "share": round(share, 6)},
    )


def line_offsets(homeloc: HomelocConfig, keys: list[str], stats: dict[str, dict]) -> dict[str, int]:
    """Per batch the input lines before it (header lines read from each plan's file)."""
    catalog = Catalog(homeloc.storage_dir)
    header_lines = {}
    for plan_id in {s["plan_id"] for s in stats.values()}:
        plan = catalog.load_plan(plan_id)
        with open(plan.path, "rb") as fh:
            header_lines[plan_id] = fh.read(plan.header_end).count(b"\n")
    return global_line_offsets(keys, stats, header_lines)


def write_stopped_rejects(homeloc: HomelocConfig, keys: list[str],
                          stats: dict[str, dict]) -> tuple[Path, str]:
    """Write ``<out>/stopped_run/rejected_rows.csv`` before a threshold stops the run.

    Returns its path and the three most common reasons with their counts, so
    the message can name them; the published exports are not touched.
    """
    from homeloc_assets.exports import REJECTS_SCHEMA, _global_rejects, _stream_csv

    offsets = line_offsets(homeloc, keys, stats)
    rejects = PartitionedTables({k: homeloc.layout.table(REJECTED_ROWS, k) for k in keys})
    target = homeloc.settings.output_layout.stopped_rejects
    with atomic_path(target) as tmp:
        _stream_csv(tmp, _global_rejects(rejects, offsets), REJECTS_SCHEMA)
    counts: dict[str, int] = {}
    for _, t in rejects.iter_tables(["reason"]):
        for item in pc.value_counts(t.column("reason")).to_pylist():
            counts[item["values"]] = counts.get(item["values"], 0) + int(item["counts"])
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    return target.resolve(), ", ".join(f"\"{r}\" ({n:,})" for r, n in top) or "none recorded"


def run_info(homeloc: HomelocConfig, name: str, code: str, stats: dict[str, dict],
             generation: str = "") -> RunInfo:
    """The settings this classification is made with, as stored in its table."""
    catalog = Catalog(homeloc.storage_dir)
    inputs = []
    for plan_id in sorted({s["plan_id"] for s in stats.values()}):
        plan = catalog.load_plan(plan_id)
        inputs.append(InputInfo(plan.path, plan_id, plan.fingerprint, plan.size))
    settings = homeloc.settings
    region = settings.study_region_spec
    log2m, explicit_max = hll_params_of(homeloc.layout, list(stats))
    return RunInfo(
        study_country=name,
        study_country_code=code,
        min_userdays=float(homeloc.min_userdays),
        max_reject_share=float(homeloc.max_reject_share),
        batch_users=int(homeloc.batch_users),
        inputs=tuple(inputs),
        min_share=float(homeloc.min_share),
        min_margin=float(homeloc.min_margin),
        study_region=f"{region[0]}={region[1]}" if region and region[0] != "country" else "",
        layers=tuple(str(s) for s in settings.layer_specs),
        hll_log2m=log2m,
        hll_explicit_max=explicit_max,
        generation=generation,
    )


def hll_params_of(layout: Layout, keys: list[str]) -> tuple[int, int]:
    """``(log2m, explicit threshold)`` of the run's hll values (its first stored value)."""
    from homeloc_assets import hll

    for key in keys:
        path = layout.table(USER_LOCATIONS, key)
        if not path.exists():
            continue
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1, columns=["userday_hll"]):
            if batch.num_rows:
                p = hll.decode(batch.column(0)[0].as_py()).params
                return p.log2m, p.effective_expthresh
    return 11, 160


def users_seen_twice(homes: PartitionedTables, stats: dict[str, dict]) -> int:
    """How many user rows repeat a user of another row, over all batches.

    Within one input file this cannot happen any more once
    :func:`check_input_grouping` passed; only with several input files (whose
    users may overlap) are all ids hashed, one column at a time.
    """
    dup = sum(int(s.get("duplicate_users", 0)) for s in stats.values())
    plans = {s["plan_id"] for s in stats.values()}
    if len(plans) > 1:
        seen = pa.chunked_array(
            [t.column("user_guid").combine_chunks() for _, t in homes.iter_tables(["user_guid"])],
            pa.string(),
        )
        return len(seen) - pc.count_distinct(seen).as_py()
    return dup


def check_input_grouping(homeloc: HomelocConfig, stats: dict[str, dict]) -> None:
    """Each input's users must have their rows together over all its batches (InputError)."""
    from homeloc_assets.inputs.grouping import check_grouped

    catalog = Catalog(homeloc.storage_dir)
    by_plan: dict[str, list[dict]] = {}
    for s in stats.values():
        by_plan.setdefault(s["plan_id"], []).append(s)
    for plan_id, items in by_plan.items():
        items.sort(key=lambda s: int(s["index"]))
        plan = catalog.load_plan(plan_id)
        check_grouped(plan.path, (pq.read_table(homeloc.layout.users_file(s["key"]))
                                  for s in items))


#: rows sampled from the batches' user_locations to try the coordinates swapped
SWAP_SAMPLE = 20_000


def check_no_country_share(
    homeloc: HomelocConfig, stats: dict[str, dict], countries: gpd.GeoDataFrame
) -> None:
    """Stop (ImplausibleInputError) when more points than allowed fall in no country.

    The likely cause is named: when a sample of the points, swapped, lands in
    a country far more often, the latitude and longitude columns are swapped.
    """
    rows = sum(int(s["rows"]) for s in stats.values())
    none = sum(int(s["points_in_no_country"]) for s in stats.values())
    share = none / rows if rows else 0.0
    limit = homeloc.max_no_country_share
    if share <= limit:
        return
    head = (f"{none} of {rows} points ({share:.1%}) fall in no country — above the limit of "
            f"{limit:.0%} (--max-no-country-share)")
    in_orig, in_swapped = swapped_sample_shares(homeloc, list(stats), countries)
    if in_swapped >= 0.5 and in_swapped >= 2 * in_orig:
        cause = (f"latitude and longitude look swapped ({in_swapped:.0%} of points fall in a "
                 "country when swapped); swap the two columns of the input")
    else:
        cause = ("check that latitude and longitude are WGS84 degrees and that the countries "
                 "file (HOMELOC_COUNTRIES_PATH) covers the study area; raise "
                 "--max-no-country-share to accept")
    raise ImplausibleInputError(f"{head}; {cause}")


def swapped_sample_shares(
    homeloc: HomelocConfig, keys: list[str], countries: gpd.GeoDataFrame
) -> tuple[float, float]:
    """(share in a country, share in a country with lat/lon swapped) of up to SWAP_SAMPLE points."""
    import numpy as np

    from homeloc_assets.defs.batches import country_lookup

    files = [p for k in keys
             if (p := homeloc.layout.table(USER_LOCATIONS, k)).exists()]
    if not files:
        return 0.0, 0.0
    per_file = max(1, -(-SWAP_SAMPLE // len(files)))
    parts = []
    for path in files:
        pf = pq.ParquetFile(path)
        n = 0
        for rb in pf.iter_batches(batch_size=per_file, columns=["latitude", "longitude", "country"]):
            parts.append(rb.slice(0, per_file - n))
            n += min(rb.num_rows, per_file - n)
            if n >= per_file:
                break
        if sum(p.num_rows for p in parts) >= SWAP_SAMPLE:
            break
    t = pa.Table.from_batches(parts) if parts else None
    if t is None or t.num_rows == 0:
        return 0.0, 0.0
    lat = t.column("latitude").to_numpy().astype(np.float64)
    lon = t.column("longitude").to_numpy().astype(np.float64)
    in_orig = float(pc.mean(pc.is_valid(t.column("country")).cast(pa.float64())).as_py())
    swapped = country_lookup(countries, homeloc.layout).lookup(lat, lon)
    return in_orig, float(np.mean(swapped >= 0))


def _as_partitioned(value) -> PartitionedTables:
    if isinstance(value, PartitionedTables):
        return value
    raise dg.Failure("expected all user batches as input")


@dg.asset(
    name=HOMELOC_EXPORTS,
    group_name="results",
    kinds={"csv", "parquet"},
    automation_condition=dg.AutomationCondition.eager(),
    deps=[USER_CLASSIFICATION],
    ins={
        "user_home_locations": dg.AssetIn(USER_HOME_LOCATIONS),
        "user_country_userdays": dg.AssetIn(USER_COUNTRY_USERDAYS),
        "rejected_rows": dg.AssetIn(REJECTED_ROWS),
    },
    description=(
        "The export files in HOMELOC_OUTPUT_DIR: user_home_locations.csv/.parquet, "
        "user_classification.csv, user_country_userdays.parquet, rejected_rows.csv, summary.json "
        "— each written atomically."
    ),
)
def homeloc_exports(
    context: dg.AssetExecutionContext,
    homeloc: HomelocConfig,
    user_home_locations: PartitionedTables,
    user_country_userdays: PartitionedTables,
    rejected_rows: PartitionedTables,
) -> dg.MaterializeResult:
    """Stream every batch into the export files."""
    homes = classified_batches(homeloc, user_home_locations)
    keys = homes.keys()
    stats = batch_stats(homeloc, keys)
    offsets = line_offsets(homeloc, keys, stats)
    cls_path = classification_path(homeloc)
    info = read_run_info(cls_path)
    cls = pq.read_table(cls_path, columns=["classification"],
                        read_dictionary=["classification"]).column("classification")
    counts = {item["values"]: int(item["counts"]) for item in pc.value_counts(cls).to_pylist()}
    summary = {
        "inputs": [i.path for i in info.inputs],
        "batches": len(keys),
        "users": sum(s["users"] for s in stats.values()),
        "users_with_home": sum(s["users_with_home"] for s in stats.values()),
        "locals": counts.get(CLASS_LOCAL, 0),
        "tourists": sum(counts.get(c, 0) for c in (CLASS_TOURIST, CLASS_DOMESTIC, CLASS_INTERNATIONAL)),
        **({"domestic_tourists": counts.get(CLASS_DOMESTIC, 0),
            "international_tourists": counts.get(CLASS_INTERNATIONAL, 0),
            "study_region": info.study_region} if info.study_region else {}),
        "undetermined": counts.get(CLASS_UNDETERMINED, 0),
        "rows": sum(s["rows"] for s in stats.values()),
        "rejected_rows": sum(s["rejected"] for s in stats.values()),
        "points_in_no_country": sum(s["points_in_no_country"] for s in stats.values()),
        "ties": sum(s["ties"] for s in stats.values()),
        "study_country": info.study_country,
        "study_country_code": info.study_country_code,
        "min_userdays": info.min_userdays,
        "min_share": info.min_share,
        "min_margin": info.min_margin,
        "layers": list(info.layers),
        "hll_log2m": info.hll_log2m,
        "hll_explicit_max": info.hll_explicit_max,
    }
    layer_parts = {}
    for spec in info.layers:
        name = spec.partition("=")[0]
        layer_parts[name] = tuple(
            PartitionedTables({k: homeloc.layout.table(asset, k) for k in keys})
            for asset in layer_assets(name))
    target = publication_dir(homeloc)
    paths = write_exports(
        target,
        homes,
        _as_partitioned(user_country_userdays).subset(keys),
        cls_path,
        _as_partitioned(rejected_rows).subset(keys),
        offsets,
        summary,
        home_evidence=lambda t: with_evidence(t, info),
        layers=layer_parts,
        layer_evidence=lambda t: with_evidence(t, info),
    )
    return dg.MaterializeResult(
        metadata={
            "output_dir": dg.MetadataValue.path(str(Path(homeloc.output_dir).resolve())),
            "generation": info.generation,
            "files": ", ".join(sorted(paths)),
            "home_countries": home_countries_table(paths["home_countries.csv"]),
            **{k: v for k, v in summary.items() if isinstance(v, int)},
        }
    )


def home_countries_table(path: Path) -> dg.TableMetadataValue:
    """``home_countries.csv`` as a table in the UI (every home country)."""
    import pyarrow.csv as pacsv

    from homeloc_assets.exports import HOME_COUNTRIES_SCHEMA

    t = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
        column_types=HOME_COUNTRIES_SCHEMA))
    kinds = {"country": "string", "code": "string", "share": "float"}
    schema = dg.TableSchema(columns=[dg.TableColumn(c, kinds.get(c, "int"))
                                     for c in t.column_names])
    rows = [dg.TableRecord({**r, "share": round(r["share"], 6)}) for r in t.to_pylist()]
    return dg.MetadataValue.table(rows, schema=schema)
