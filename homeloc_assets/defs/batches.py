"""The per-batch assets: user_locations, user_country_userdays, user_home_locations, rejected_rows.

One step computes all four for its batches (they come from the same pass over
the bytes), partitioned by the dynamic ``user_batches`` partitions. A run may
cover a range of batches: they are processed on all cores.
"""


import hashlib
import pickle

import dagster as dg
import geopandas as gpd
import numpy as np
import shapely

from homeloc_assets.batch_runner import (
    WorkerSetup,
    batch_assets,
    is_finished,
    read_stats,
    run_batches,
)
from homeloc_assets.defs.resources import HllBackendResource, HomelocConfig
from homeloc_assets.geo import CountryLookup
from homeloc_assets.geo.layers import LayerSpec, layer_assets, load_layer
from homeloc_assets.inputs.folder import BATCHES_PER_RUN
from homeloc_assets.layout import Layout
from homeloc_assets.names import (
    BATCH_STEP,
    COUNTRIES,
    REJECTED_ROWS,
    USER_COUNTRY_USERDAYS,
    USER_HOME_LOCATIONS,
    USER_LOCATIONS,
)
from homeloc_assets.tables import StagedPartitions

user_batches = dg.DynamicPartitionsDefinition(name="user_batches")

#: Batches per run in UI backfills: few runs (low Dagster overhead), each on all cores.
BACKFILL_BATCHES_PER_RUN = BATCHES_PER_RUN  # one owner: inputs.folder

POINTS_IN_NO_COUNTRY_WARN = 0.05


class BatchRunConfig(dg.Config):
    """Run options for the batch step."""

    reuse_finished: bool = False
    """Keep batches whose files are complete (resume after a crash) instead of recomputing."""


def country_lookup(countries: gpd.GeoDataFrame, layout: Layout) -> CountryLookup:
    """The grid lookup for ``countries``, cached on disk by the geometries' hash."""
    wkb = shapely.to_wkb(np.asarray(countries.geometry.array, dtype=object))
    digest = hashlib.sha1(b"".join(wkb)).hexdigest()[:16]
    cache = layout.country_lookup_file(digest)
    if cache.exists():
        try:
            return CountryLookup.load(cache, countries)
        except Exception:  # noqa: BLE001 - a stale or damaged cache is rebuilt
            cache.unlink(missing_ok=True)
    lookup = CountryLookup.from_countries(countries)
    cache.parent.mkdir(parents=True, exist_ok=True)
    lookup.save(cache)
    return lookup


def _layer_outs(layers: tuple[LayerSpec, ...]) -> dict[str, dg.AssetOut]:
    outs = {}
    for spec in layers:
        ud, home = layer_assets(spec.name)
        outs[ud] = dg.AssetOut(
            group_name="regions", kinds={"pyarrow", "parquet"},
            description=(f"Layer `{spec}`: per user and region, `userdays` = "
                         "hll_cardinality(hll_union_agg(userday_hll)) over the user's locations "
                         "in that region, and the number of `locations`."))
        outs[home] = dg.AssetOut(
            group_name="regions", kinds={"pyarrow", "parquet"},
            description=(f"Layer `{spec}`: per user the home region (most distinct userdays) "
                         "with `total_userdays`, `home_share`, `runner_up_code`, `margin`, `tie`."))
    return outs


def make_batch_assets(layers: tuple[LayerSpec, ...] = ()) -> dg.AssetsDefinition:
    """The batch step for the four per-batch tables plus two tables per region layer."""

    @dg.multi_asset(
        name=BATCH_STEP,
        outs={**{
            USER_LOCATIONS: dg.AssetOut(
                group_name="users",
                kinds={"pyarrow", "parquet"},
                description=(
                    "Validated input rows of one user batch with the country of each point "
                    "(`country`/`country_code` null: in no country) and the row's input line."
                ),
            ),
            USER_COUNTRY_USERDAYS: dg.AssetOut(
                group_name="users",
                kinds={"pyarrow", "parquet"},
                description=(
                    "Per user and country: `userdays` = hll_cardinality(hll_union_agg(userday_hll)) "
                    "over the user's locations in that country, and the number of `locations`."
                ),
            ),
            USER_HOME_LOCATIONS: dg.AssetOut(
                group_name="users",
                kinds={"pyarrow", "parquet"},
                description=(
                    "Per user the home country (most distinct userdays), its `userdays`, the user's "
                    "`total_userdays` over all countries, `home_share`, `runner_up` with its "
                    "userdays, `margin` and a `tie` flag (ties go to the first country by name)."
                ),
            ),
            REJECTED_ROWS: dg.AssetOut(
                group_name="users",
                kinds={"pyarrow", "parquet"},
                description="Input rows rejected in this batch: `line` (relative to the batch), `reason`, `raw`.",
            ),
        }, **_layer_outs(layers)},
        partitions_def=user_batches,
        check_specs=[
            dg.AssetCheckSpec(
                "one_home_per_user",
                asset=USER_HOME_LOCATIONS,
                description=("No user has two home rows in a batch (over all batches the "
                         "classification checks that each user's rows are together)."),
            ),
            dg.AssetCheckSpec(
                "points_in_a_country",
                asset=USER_LOCATIONS,
                description=f"Warn when over {POINTS_IN_NO_COUNTRY_WARN:.0%} of points fall in no country.",
            ),
        ],
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=BACKFILL_BATCHES_PER_RUN),
        pool="homeloc_batches",
        ins={"countries": dg.AssetIn(COUNTRIES)},
    )
    def user_batch_assets(
        context: dg.AssetExecutionContext,
        config: BatchRunConfig,
        homeloc: HomelocConfig,
        hll_backend: HllBackendResource,
        countries: gpd.GeoDataFrame,
    ):
        """Read, validate, locate and union the batches of this run on all cores."""
        yield from _run_batch_step(context, config, homeloc, hll_backend, countries, layers)

    return user_batch_assets


user_batch_assets = make_batch_assets()


def batch_landscape_spec(homeloc: HomelocConfig, countries: gpd.GeoDataFrame,
                         layers: tuple[LayerSpec, ...] = ()):
    """The landscape settings the batch workers compute each batch's landscape tables with
    (those ``user_classification`` will have unless the settings change in between), or None
    (``Settings.landscape`` off, or a study country that does not resolve: the
    classification reports that)."""
    from homeloc_assets.geo import resolve_country
    from homeloc_assets.inference.landscape import BatchLandscapeSpec

    settings = homeloc.settings
    if not settings.landscape:
        return None
    try:
        region = settings.study_region_spec
        study = region[1] if region and region[0] == "country" else homeloc.study_country
        _, code = resolve_country(countries, study)
    except Exception:  # noqa: BLE001 - the classification step names the problem
        return None
    p = settings.landscape_params
    return BatchLandscapeSpec(
        code, p.resolution, p.ring, float(homeloc.min_userdays), float(homeloc.min_share),
        float(homeloc.min_margin),
        f"{region[0]}={region[1]}" if region and region[0] != "country" else "",
        tuple(str(s) for s in layers))


def _partition_metadata(s: dict, layer_names: tuple[str, ...]) -> dict[str, dict]:
    """Per batch asset the counts of one batch (its stats), shown on that partition."""
    share = s["points_in_no_country"] / s["rows"] if s["rows"] else 0.0
    users = {"users": s["users"], "users_with_home": s["users_with_home"]}
    meta = {
        USER_LOCATIONS: {"rows": s["rows"], "points_in_no_country": s["points_in_no_country"],
                           "share_in_no_country": round(share, 6), "input_lines": s["n_lines"]},
        USER_COUNTRY_USERDAYS: {"users": s["users"]},
        USER_HOME_LOCATIONS: {**users, "ties": s["ties"]},
        REJECTED_ROWS: {"rejected": s["rejected"]},
    }
    for name in layer_names:
        ud, home = layer_assets(name)
        meta[ud] = {"users": s["users"]}
        meta[home] = {"users": s["users"],
                      "users_with_home": int(s.get(f"users_with_home_{name}", 0))}
    return meta


def _run_batch_step(context, config, homeloc, hll_backend, countries, layers):
    keys = list(context.partition_keys)
    catalog = homeloc.catalog
    refs = [catalog.batch(k) for k in keys]
    settings = homeloc.settings
    layout = settings.layout
    layer_names = tuple(spec.name for spec in layers)
    assets = batch_assets(layer_names)
    todo = [
        r for r in refs
        if not (config.reuse_finished and is_finished(layout, r.key, assets))
    ]
    reused = len(refs) - len(todo)
    backend = hll_backend.make()
    context.log.info(f"HLL backend: {backend.check()}")
    backend.close()
    lookup = country_lookup(countries, layout)
    setup = WorkerSetup(
        country_names=countries["country"].to_numpy(dtype=object),
        country_codes=countries["country_code"].to_numpy(dtype=object),
        lookup_pickle=pickle.dumps(lookup),
        backend=hll_backend.backend,
        pg=hll_backend.backend_pg,
        storage_dir=str(layout.root),
        layers_pickle=pickle.dumps(tuple(load_layer(spec, layout.lookup) for spec in layers)),
        layer_names=layer_names,
        landscape=batch_landscape_spec(homeloc, countries, layers),
        lease_timeout=settings.lease_timeout,
    )
    done = {"n": 0}

    def progress(res: dict) -> None:
        done["n"] += 1
        s = res["stats"]
        context.log.info(
            f"batch {res['key']} done ({done['n']}/{len(todo)}): {s['users']} users, "
            f"{s['rows']} rows, {s['rejected']} rejected"
        )

    if settings.dask_scheduler:
        context.log.info(f"batches on the Dask cluster {settings.dask_scheduler}")
    run_batches(todo, setup, settings.n_workers, on_done=progress,
                dask_scheduler=settings.dask_scheduler or None, dask_wait=settings.dask_wait)

    stats = [read_stats(layout, r.key) for r in refs]
    total = {
        k: int(sum(s[k] for s in stats))
        for k in ("rows", "rejected", "users", "users_with_home", "points_in_no_country", "ties")
    }
    files = {
        asset: StagedPartitions(
            {r.key: layout.table(asset, r.key) for r in refs},
            metadata={"batches": len(refs), "batches_reused": reused},
        )
        for asset in assets
    }
    share_none = total["points_in_no_country"] / total["rows"] if total["rows"] else 0.0
    # each partition shows its own counts; the run's totals go to the run's log
    for ref, s in zip(refs, stats, strict=True):
        for asset, meta in _partition_metadata(s, layer_names).items():
            context.add_asset_metadata(meta, asset_key=asset, partition_key=ref.key)
    context.log.info(
        f"{len(refs)} batch(es): {total['users']:,} users, {total['rows']:,} rows, "
        f"{total['rejected']:,} rejected, {total['points_in_no_country']:,} points in no country")
    for asset in assets:
        yield dg.Output(files[asset], output_name=asset)
    dup = sum(s.get("duplicate_users", 0) for s in stats)
    yield dg.AssetCheckResult(
        check_name="one_home_per_user",
        asset_key=USER_HOME_LOCATIONS,
        passed=dup == 0,
        metadata={"duplicate_users": dup},
    )
    yield dg.AssetCheckResult(
        check_name="points_in_a_country",
        asset_key=USER_LOCATIONS,
        passed=share_none <= POINTS_IN_NO_COUNTRY_WARN,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"share_in_no_country": round(share_none, 6)},
    )
