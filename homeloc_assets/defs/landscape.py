"""Landscape assets: where Locals and Tourists leave their traces, per H3 cell and per region.

``landscape_batch_cells`` (partitioned like the batches) holds each batch's
userday HLL unions per (cell, class); the batch workers compute them from the
rows in memory (``batch_runner``), so this asset only links them into place
unless the classification's settings changed since. ``landscape_cells`` unions
those over all batches, tests every cell and writes ``landscape_cells.parquet``
and ``landscape_cells.gpkg`` to the export folder; two maps show the study
country by category and by tourist share. Per extra region layer,
``landscape_batch_layer_<NAME>`` and ``landscape_layer_<NAME>`` do the same per
(region, class), exported as ``landscape_layer_<NAME>.parquet``. All are eager
(``homeloc_automation``). The work is in ``inference.landscape``.
"""


import os
import shutil
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg
import geopandas as gpd
import pyarrow as pa
import pyarrow.parquet as pq

from homeloc_assets import plots
from homeloc_assets.atomic import atomic_path, remove_dead_staged, staged_path
from homeloc_assets.defs.batches import BACKFILL_BATCHES_PER_RUN, user_batches
from homeloc_assets.defs.classification import (
    classification_path,
    publication_dir,
    select_batches,
)
from homeloc_assets.defs.reports import _publish
from homeloc_assets.defs.resources import HomelocConfig
from homeloc_assets.exports import exports_lock
from homeloc_assets.geo.layers import LayerSpec, layer_assets, load_layer
from homeloc_assets.inference.landscape import (
    NO_DICTIONARY,
    PARAMS_KEY,
    BatchLandscapeSpec,
    batch_cells,
    batch_params,
    batch_regions,
    cell_polygons,
    cell_wkb,
    combine,
    combine_regions,
    landscape_table,
    region_table,
)
from homeloc_assets.inference.rules import classify_batch
from homeloc_assets.names import (
    COUNTRIES,
    LANDSCAPE_BATCH_CELLS,
    LANDSCAPE_BATCH_STEP,
    LANDSCAPE_CELLS,
    USER_CLASSIFICATION,
    USER_HOME_LOCATIONS,
    USER_LOCATIONS,
)
from homeloc_assets.provenance import read_run_info
from homeloc_assets.tables import PartitionedTables, StagedPartitions, write_table

LANDSCAPE_FILES = ("landscape_cells.parquet", "landscape_cells.gpkg")
_PARAMS_KEY = PARAMS_KEY


def layer_landscape_assets(name: str) -> tuple[str, str]:
    """The landscape assets of region layer ``name``: (per batch, over all batches); the
    second also names its export ``<name>.parquet``."""
    return f"landscape_batch_layer_{name}", f"landscape_layer_{name}"


def _landscape_batch_step(context: dg.AssetExecutionContext, homeloc: HomelocConfig,
                          layers: tuple[LayerSpec, ...]):
    """Stage each batch's landscape tables: the ones the batch worker left when it made them with
    the same settings (a hard link), else computed here from the batch's files."""
    info = read_run_info(classification_path(homeloc))
    p = homeloc.settings.landscape_params
    spec = BatchLandscapeSpec.of(info, p, [str(s) for s in layers])
    keys = list(context.partition_keys)
    code = info.study_country_code
    meta = {_PARAMS_KEY: batch_params(p.resolution, p.ring, code)}
    layout = homeloc.layout
    kinds = {"cells": LANDSCAPE_BATCH_CELLS, **{s.name: layer_landscape_assets(s.name)[0] for s in layers}}
    located_by: dict = {}
    if layers:
        located_by = {s.name: load_layer(s, layout.lookup) for s in layers}

    def stage(kind: str, key: str) -> Path:
        folder = layout.table(kinds[kind], key).parent
        folder.mkdir(parents=True, exist_ok=True)
        remove_dead_staged(folder, key)
        return staged_path(folder, key)

    def one(key: str) -> tuple[dict[str, Path], int]:
        out: dict[str, Path] = {}
        todo = []
        for kind in kinds:
            cache = layout.landscape_cache_file(key, kind, spec.tag(kind))
            target = stage(kind, key)
            try:
                os.link(cache, target)
            except FileNotFoundError:
                todo.append(kind)
                continue
            except OSError:  # no hard links here (another file system): a copy
                try:
                    shutil.copyfile(cache, target)
                except FileNotFoundError:
                    todo.append(kind)
                    continue
            out[kind] = target
        reused = len(out)
        if todo:
            out.update(_compute(key, todo))
        return out, reused

    def _compute(key: str, todo: list[str]) -> dict[str, Path]:
        files = [layout.table(a, key) for a in (USER_LOCATIONS, USER_HOME_LOCATIONS)]
        missing = [f for f in files if not f.exists()]
        if missing:
            raise dg.Failure(f"batch {key} is not materialized yet ({missing[0]})")
        cols = ["user_guid", "latitude", "longitude", "country_code", "userday_hll"]
        only_cells = todo == ["cells"]
        # the cells need only the study country's rows; a layer needs all of them
        locs = pq.read_table(files[0], columns=cols,
                             filters=[("country_code", "=", code)] if only_cells else None)
        classes = classify_batch(pq.read_table(files[1]), info,
                                 lambda asset, k=key: layout.table(asset, k))
        out = {}
        for kind in todo:
            if kind == "cells":
                t = batch_cells(locs, classes, code, p.resolution, p.ring)
                t = t.replace_schema_metadata(meta)
            else:
                located = located_by[kind].locate(locs.column("longitude").to_numpy(),
                                                  locs.column("latitude").to_numpy())
                t = batch_regions(locs.column("user_guid").combine_chunks(),
                                  locs.column("userday_hll").combine_chunks(), located.index,
                                  located.names, located.codes, classes)
            target = stage(kind, key)
            write_table(t, target, no_dictionary=NO_DICTIONARY)
            out[kind] = target
        return out

    # threads: Arrow and numpy's sorts release the GIL, so batches overlap on all cores
    with ThreadPoolExecutor(max_workers=homeloc.settings.n_workers) as pool:
        done = dict(zip(keys, pool.map(one, keys), strict=True))
    staged = {k: v[0] for k, v in done.items()}
    md = {"batches": len(staged), "resolution": p.resolution, "ring": p.ring,
          "tables_from_batch_workers": sum(v[1] for v in done.values())}
    for kind, asset in kinds.items():
        yield dg.Output(StagedPartitions({k: v[kind] for k, v in staged.items()}, metadata=md),
                        output_name=asset)


def make_landscape_batch_assets(layers: tuple[LayerSpec, ...] = ()) -> dg.AssetsDefinition:
    """``landscape_batch_cells`` and one ``landscape_batch_layer_<NAME>`` per region layer."""
    outs = {LANDSCAPE_BATCH_CELLS: dg.AssetOut(
        group_name="landscape", kinds={"h3", "parquet"},
        automation_condition=dg.AutomationCondition.eager(),
        description=(
            "Per batch, H3 cell (HOMELOC_CELL_RESOLUTION) and class: hll_union_agg of the "
            "userday HLLs of that class's users' locations in the study country, distinct "
            "users, the users' repeats in the cell's k-ring (HOMELOC_CELL_RING) and rows. The batch "
            "workers compute it from the rows in memory; here it is only staged, unless "
            "the classification's settings changed since."))}
    for spec in layers:
        outs[layer_landscape_assets(spec.name)[0]] = dg.AssetOut(
            group_name="landscape", kinds={"parquet"},
            automation_condition=dg.AutomationCondition.eager(),
            description=(f"Layer `{spec}`, per batch, region and class: hll_union_agg of the "
                         "userday HLLs of that class's users' locations in the region, "
                         "distinct users and rows."))
    deps = [USER_CLASSIFICATION, USER_LOCATIONS, USER_HOME_LOCATIONS,
            *(layer_assets(s.name)[1] for s in layers)]

    # the batch-partitioned asset needs a backfill policy (Dagster marks the parameter beta):
    # its warning would reach every `homeloc run` user's terminal
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=dg.BetaWarning)

        @dg.multi_asset(
            name=LANDSCAPE_BATCH_STEP,
            outs=outs,
            partitions_def=user_batches,
            backfill_policy=dg.BackfillPolicy.multi_run(
                max_partitions_per_run=BACKFILL_BATCHES_PER_RUN),
            # read here with only the columns and rows needed (the study country's)
            deps=deps,
        )
        def landscape_batch_assets(context: dg.AssetExecutionContext, homeloc: HomelocConfig):
            """Per batch the landscape tables (cells and per layer) under the classification's
            settings."""
            yield from _landscape_batch_step(context, homeloc, layers)

    return landscape_batch_assets


landscape_batch_cells = make_landscape_batch_assets()


@dg.asset(
    name=LANDSCAPE_CELLS,
    group_name="landscape",
    kinds={"h3", "parquet", "geopackage"},
    automation_condition=dg.AutomationCondition.eager(),
    ins={"landscape_batch_cells": dg.AssetIn(LANDSCAPE_BATCH_CELLS)},
    description=(
        "Per H3 cell of the study country: per class estimated distinct userdays, distinct "
        "users and the union HLL (bytea hex), the k-ring pooled tourist share, a two-sided "
        "binomial test against the dataset-wide share, Benjamini-Yekutieli q and a category "
        "(touristic, local, not different, too little data). Exports "
        "landscape_cells.parquet and landscape_cells.gpkg (EPSG:4326 hexagons)."
    ),
)
def landscape_cells(
    context: dg.AssetExecutionContext, homeloc: HomelocConfig, landscape_batch_cells
) -> dg.Output:
    """Union the batches, test every cell, export."""
    p = homeloc.settings.landscape_params
    info = read_run_info(classification_path(homeloc))
    parts = landscape_batch_cells if isinstance(landscape_batch_cells, PartitionedTables) else None
    if parts is None:
        raise dg.Failure("expected all user batches as input")
    parts = select_batches(homeloc, parts, info.plan_ids)
    check_batch_params(parts.files, batch_params(p.resolution, p.ring, info.study_country_code))
    table, summary = landscape_table(combine(t for _, t in parts.iter_tables()), p)
    paths = write_landscape(publication_dir(homeloc), table)
    context.log.info(f"wrote {', '.join(str(x) for x in paths.values())}")
    return dg.Output(table, metadata={
        "study_country": info.study_label, "resolution": p.resolution, "ring": p.ring,
        **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in summary.items()},
        "parquet": dg.MetadataValue.path(str(paths["landscape_cells.parquet"].resolve())),
        "gpkg": dg.MetadataValue.path(str(paths["landscape_cells.gpkg"].resolve())),
    })


def check_batch_params(files: dict[str, Path], want: bytes) -> None:
    """Fail naming the first batch table made with other settings or in an older format (its
    :data:`PARAMS_KEY` metadata is not ``want``): it must be materialized again."""
    for key, path in files.items():
        got = (pq.read_schema(path).metadata or {}).get(_PARAMS_KEY)
        if got != want:
            raise dg.Failure(f"landscape_batch_cells {key} was made with other settings "
                             f"or an older homeloc ({got!r}, now {want!r}): materialize it "
                             "again")


def landscape_frame(table: pa.Table) -> gpd.GeoDataFrame:
    """The cells as hexagons (EPSG:4326)."""
    df = table.to_pandas()
    return gpd.GeoDataFrame(df, geometry=cell_polygons(table.column("cell")), crs="EPSG:4326")


def write_landscape(out_dir: str | Path, table: pa.Table) -> dict[str, Path]:
    """``landscape_cells.parquet`` and ``.gpkg`` in ``out_dir``, each atomic, under the exports lock."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / name for name in LANDSCAPE_FILES}
    with exports_lock(out_dir):
        with atomic_path(paths["landscape_cells.parquet"]) as tmp:
            pq.write_table(table, tmp, compression="zstd")
        with atomic_path(paths["landscape_cells.gpkg"]) as tmp:
            tmp.unlink()
            with warnings.catch_warnings():  # the temporary name does not end in .gpkg
                warnings.simplefilter("ignore", RuntimeWarning)
                _write_gpkg(table, tmp)
    return paths


def _write_gpkg(table: pa.Table, path: Path) -> None:
    """GeoPackage of the cells (hexagons from H3 as WKB, written from Arrow by GDAL) with a
    fixed timestamp, so the same cells give the same bytes."""
    import pyogrio

    wkb = cell_wkb(table.column("cell"))
    field = pa.field("geometry", pa.binary(), metadata={b"ARROW:extension:name": b"geoarrow.wkb"})
    t = table.append_column(field, wkb)
    # GDAL's Arrow writer takes string, not large_string
    t = t.cast(pa.schema([f.with_type(pa.string()) if pa.types.is_large_string(f.type) else f
                          for f in t.schema]))
    key = "OGR_CURRENT_DATE"
    old = pyogrio.get_gdal_config_option(key)
    pyogrio.set_gdal_config_options({key: GPKG_DATE})
    try:
        pyogrio.write_arrow(t, path, layer="landscape_cells", driver="GPKG",
                            geometry_name="geometry", geometry_type="Polygon", crs="EPSG:4326")
    finally:
        pyogrio.set_gdal_config_options({key: old})


#: the GeoPackage's "last change" (GDAL writes the current time otherwise)
GPKG_DATE = "2000-01-01T00:00:00.000Z"

_MAP = {
    "group_name": "landscape",
    "kinds": {"matplotlib", "png", "svg"},
    "deps": [LANDSCAPE_CELLS],
    "ins": {"countries": dg.AssetIn(COUNTRIES)},
    "automation_condition": dg.AutomationCondition.eager(),
}


#: the columns of ``landscape_cells`` the maps draw (the figure cache digests only these)
MAP_COLUMNS = ("cell", "category", "tourist_share", "overall_share")


def _map_columns(homeloc: HomelocConfig) -> pa.Table:
    """The cells' :data:`MAP_COLUMNS` (not their HLLs)."""
    path = homeloc.layout.table(LANDSCAPE_CELLS)
    if not path.exists():
        raise dg.Failure(f"landscape_cells is not materialized yet ({path})")
    return pq.read_table(path, columns=list(MAP_COLUMNS))


def _landscape_map(cells: pa.Table, countries: gpd.GeoDataFrame, code: str, column: str,
                   title: str):
    """The landscape map of ``cells`` (drawn only when the figure cache has no copy)."""
    return plots.landscape_map(landscape_frame(cells), countries, code, column, title)


@dg.asset(**_MAP, description=(
    "The study country's H3 cells coloured by category (touristic, local, not different, "
    "too little data). Figure: `<output_dir>/figures/landscape_category_map.png|svg`."))
def landscape_category_map(context: dg.AssetExecutionContext, homeloc: HomelocConfig,
                           countries: gpd.GeoDataFrame) -> dg.MaterializeResult:
    """Cells by category."""
    info = read_run_info(classification_path(homeloc))
    return _publish(context, homeloc, _landscape_map,
                    (_map_columns(homeloc), countries, info.study_country_code, "category",
                     f"Locals and Tourists in {info.study_country}"),
                    "landscape_category_map", "Landscape categories")


@dg.asset(**_MAP, description=(
    "The study country's H3 cells coloured by the k-ring pooled tourist share (centred on "
    "the dataset-wide share). Figure: `<output_dir>/figures/landscape_share_map.png|svg`."))
def landscape_share_map(context: dg.AssetExecutionContext, homeloc: HomelocConfig,
                        countries: gpd.GeoDataFrame) -> dg.MaterializeResult:
    """Cells by tourist share."""
    info = read_run_info(classification_path(homeloc))
    return _publish(context, homeloc, _landscape_map,
                    (_map_columns(homeloc), countries, info.study_country_code, "tourist_share",
                     f"Tourist share of userdays in {info.study_country}"),
                    "landscape_share_map", "Tourist share")


def make_layer_landscape(spec: LayerSpec) -> dg.AssetsDefinition:
    """``landscape_layer_<NAME>``: the layer's per-class unions over all batches, exported."""
    batch_name, name = layer_landscape_assets(spec.name)

    @dg.asset(
        name=name, group_name="landscape", kinds={"parquet"},
        automation_condition=dg.AutomationCondition.eager(),
        ins={"batches": dg.AssetIn(batch_name)},
        description=(
            f"Layer `{spec}`: per region and class (Local, Tourist, undetermined) the "
            "hll_union_agg of the userday HLLs over all batches (bytea hex), its estimate and "
            f"the distinct users; tourist share. Export `{name}.parquet`."),
    )
    def _layer_landscape(context: dg.AssetExecutionContext, homeloc: HomelocConfig,
                         batches) -> dg.Output:
        if not isinstance(batches, PartitionedTables):
            raise dg.Failure("expected all user batches as input")
        info = read_run_info(classification_path(homeloc))
        batches = select_batches(homeloc, batches, info.plan_ids)
        table = region_table(combine_regions(t for _, t in batches.iter_tables()))
        path = write_layer_landscape(publication_dir(homeloc), name, table)
        context.log.info(f"wrote {path}")
        return dg.Output(table, metadata={
            "layer": str(spec), "regions": table.num_rows,
            "parquet": dg.MetadataValue.path(str(path.resolve()))})

    return _layer_landscape


def write_layer_landscape(out_dir: str | Path, name: str, table: pa.Table) -> Path:
    """``<name>.parquet`` in ``out_dir``, atomic, under the exports lock."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.parquet"
    with exports_lock(out_dir), atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return path


def make_landscape_assets(layers: tuple[LayerSpec, ...] = ()) -> list:
    """The landscape assets: per batch (cells and each layer), the cells, the maps, the layers."""
    if not layers:
        return LANDSCAPE_ASSETS
    return [make_landscape_batch_assets(layers), landscape_cells, landscape_category_map,
            landscape_share_map, *(make_layer_landscape(s) for s in layers)]


def landscape_batch_keys(layers: tuple[LayerSpec, ...] = ()) -> list[str]:
    """The per-batch landscape assets (materialised together, over a range of batches)."""
    return [LANDSCAPE_BATCH_CELLS, *(layer_landscape_assets(s.name)[0] for s in layers)]


LANDSCAPE_ASSETS: list = [landscape_batch_cells, landscape_cells, landscape_category_map,
                          landscape_share_map]
