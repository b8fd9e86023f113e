"""Report assets: the seed notebook's pictures, in the UI and next to the exports.

Each report reads ``user_classification`` (only the columns it needs, batch by
batch, so it scales with the number of users) and ``countries``, writes the
figure as PNG and SVG to ``<output_dir>/figures/`` (atomically) and shows it on
the asset's page in the UI without a click (metadata entry ``figure``, see
:func:`ui_figure_markdown`). They update when
``user_classification`` does (eager automation) and can be materialised by hand.
"""

import os
from pathlib import Path

import dagster as dg
import geopandas as gpd
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq

from homeloc_assets import plots
from homeloc_assets.defs.classification import classification_path, publication_dir
from homeloc_assets.defs.resources import HomelocConfig
from homeloc_assets.exports import class_counts
from homeloc_assets.figure_cache import cached_derived, cached_figure_files
from homeloc_assets.inference import CLASS_LOCAL, CLASS_TOURIST, CLASS_UNDETERMINED
from homeloc_assets.inference.rules import CLASS_DOMESTIC, CLASS_INTERNATIONAL
from homeloc_assets.layout import FIGURES_DIR
from homeloc_assets.names import COUNTRIES, USER_CLASSIFICATION, USER_HOME_LOCATIONS
from homeloc_assets.provenance import read_run_info

_KINDS = {"matplotlib", "png", "svg"}
_COMMON = {
    "group_name": "reports",
    "kinds": _KINDS,
    "deps": [USER_CLASSIFICATION],
    "ins": {"countries": dg.AssetIn(COUNTRIES)},
    "automation_condition": dg.AutomationCondition.eager(),
}


#: every tourist class: plain, or with a study region the domestic and international ones
TOURIST_CLASSES = (CLASS_TOURIST, CLASS_DOMESTIC, CLASS_INTERNATIONAL)


def _study(config: HomelocConfig) -> tuple[str, str]:
    """The study country the classification was made with (its RunInfo), never the defaults."""
    info = read_run_info(classification_path(config))
    return info.study_country, info.study_country_code


def figures_dir(config: HomelocConfig) -> Path:
    """Where the report figures go: ``figures/`` of the classification's generation folder
    (published as ``<output_dir>/figures``)."""
    return publication_dir(config) / FIGURES_DIR


def home_counts(path: str | Path) -> pd.DataFrame:
    """Users per (home ``country_code``, ``country``, ``classification``) as a DataFrame
    (:func:`homeloc_assets.exports.class_counts`, counted once per process and file version)."""
    path = Path(path)
    if not path.exists():
        raise dg.Failure(f"user_classification is not materialized yet ({path})")
    counts = class_counts(path)
    if not counts.num_rows:
        return pd.DataFrame({"country_code": [], "country": [], "classification": [], "users": []})
    return counts.to_pandas().groupby(["country_code", "country", "classification"],
                                      as_index=False)["users"].sum()


def _top_table(df: pd.DataFrame, value: str, n: int = 10, fmt: str = "{:,}") -> str:
    top = df.sort_values([value, "country"], ascending=[False, True]).head(n)
    lines = [f"| country | {value} |", "|---|---:|"]
    lines += [f"| {r.country} ({r.country_code}) | {fmt.format(getattr(r, value))} |"
              for r in top.itertuples()]
    return "\n".join(lines)


#: where the UI copies of the figures go, inside the instance's local compute-log folder
UI_FIGURES = "homeloc_figures"
#: UI copies kept per figure (older materialisations' pictures are removed)
UI_FIGURES_KEPT = 10
#: Dagster shows a Markdown metadata value inline only when it is shorter than this
#: (``MetadataEntry.tsx``: ``expandSmallValues && entry.mdStr.length < 1000``), else behind
#: "[Show Markdown]".
INLINE_MARKDOWN_LIMIT = 1000
#: pixels across of the UI copy of a figure (the files in ``figures/`` are 150 dpi): the width
#: of the Metadata section of an asset's overview in a 1600 px wide window, which does not
#: scale images down (they would be cut off at its right edge)
UI_WIDTH_PX = 870


#: highest resolution of a figure's UI copy
UI_MAX_DPI = 100.0


def ui_dpi(fig) -> float:
    """Resolution of a figure's UI copy: :data:`UI_WIDTH_PX` wide, at most :data:`UI_MAX_DPI`."""
    return min(UI_MAX_DPI, UI_WIDTH_PX / float(fig.get_size_inches()[0]))


#: what :func:`ui_png` calls (its cached copies are made again when these change)
UI_PNG_DEPENDS = ("homeloc_assets.plots", "PIL")


def ui_png(png_file: str | Path) -> bytes:
    """The UI copy of a saved figure: the :func:`ui_dpi` size, scaled from its PNG file."""
    return plots.scaled_png(png_file, UI_WIDTH_PX, max_scale=UI_MAX_DPI / plots.SAVE_DPI)


def _local_log_manager(instance):
    """The instance's local compute-log manager (the one the webserver's ``/logs/`` route reads)."""
    manager = getattr(instance, "compute_log_manager", None)
    if manager is not None and not hasattr(manager, "get_captured_local_path"):
        manager = getattr(manager, "local_manager", None)  # cloud managers keep a local one
    return manager if hasattr(manager, "get_captured_local_path") else None


def ui_figure_markdown(instance, png: bytes, name: str, alt: str) -> str | None:
    """A short Markdown image the Dagster UI shows inline, or None where it cannot be served.

    The Dagster webserver serves files of the local compute-log folder at
    ``/logs/<namespace>/<name>/<extension>`` (its captured-log download route,
    which reads them through the instance's compute-log manager): the PNG is
    written there under a name with its content hash (no stale browser cache)
    and the Markdown refers to that URL, well under
    :data:`INLINE_MARKDOWN_LIMIT` characters. Only the newest
    :data:`UI_FIGURES_KEPT` copies of each figure are kept.
    """
    import hashlib

    from homeloc_assets.atomic import atomic_path

    manager = _local_log_manager(instance)
    if manager is None:
        return None
    stem = f"{name}-{hashlib.sha256(png).hexdigest()[:16]}"
    try:
        target = Path(manager.get_captured_local_path([UI_FIGURES, stem], "png"))
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            Path(tmp).write_bytes(png)
        os.utime(target)  # an unchanged figure is the newest copy again
        old = sorted(target.parent.glob(f"{name}-*.png"), key=lambda q: q.stat().st_mtime_ns)
        for stale in old[:-UI_FIGURES_KEPT]:
            stale.unlink(missing_ok=True)
    except (OSError, ValueError):
        return None
    md = f"![{alt}](/logs/{UI_FIGURES}/{stem}/png)"
    return md if len(md) < INLINE_MARKDOWN_LIMIT else None


def _publish(context, config: HomelocConfig, draw, args: tuple, name: str, alt: str,
             extra_md: str = "", metadata: dict | None = None,
             kwargs: dict | None = None) -> dg.MaterializeResult:
    """Write the figure ``draw(*args, **kwargs)`` and show it in the UI.

    The files come from the shared figure cache when the same drawing code was
    drawn from the same inputs before (``homeloc_assets.figure_cache``), else
    the figure is drawn and cached.

    ``figure``: the PNG shown inline on the asset's page (see
    :func:`ui_figure_markdown`); where it cannot be served (no local compute-log
    folder), the figure as a data-URI image instead, one click away behind
    "[Show Markdown]". ``extra_md`` (a table) is its own entry, inline when short.
    """
    paths, cached = cached_figure_files(draw, args, kwargs, name=name,
                                        out_dir=figures_dir(config),
                                        cache_dir=config.layout.figure_cache)
    png = cached_derived(ui_png, paths["png"], config.layout.figure_cache, UI_PNG_DEPENDS)
    md = ui_figure_markdown(context.instance, png, name, alt)
    if md is None:
        import base64

        md = f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"
    how = "copied from the figure cache" if cached else "wrote"
    context.log.info(f"{name}: {how} {paths['png']} and {paths['svg']}")
    extra = {"table": dg.MetadataValue.md(extra_md)} if extra_md else {}
    return dg.MaterializeResult(
        metadata={
            "figure": dg.MetadataValue.md(md),
            **extra,
            "png": dg.MetadataValue.path(str(paths["png"].resolve())),
            "svg": dg.MetadataValue.path(str(paths["svg"].resolve())),
            **(metadata or {}),
        }
    )


@dg.asset(
    **_COMMON,
    description=(
        "Bar chart of users per class — Locals of the study country, Tourists, undetermined — "
        "with counts and shares on the bars (the seed notebook's Locals-vs-Tourists countplot). "
        "Figure: `<output_dir>/figures/classification_report.png|svg`."
    ),
)
def classification_report(
    context: dg.AssetExecutionContext, homeloc: HomelocConfig, countries: gpd.GeoDataFrame
) -> dg.MaterializeResult:
    """Users per class."""
    df = home_counts(classification_path(homeloc))
    name, code = _study(homeloc)
    counts = df.groupby("classification")["users"].sum().to_dict()
    counts = {k: int(counts.get(k, 0)) for k in (CLASS_LOCAL, CLASS_TOURIST, CLASS_UNDETERMINED)
              } | {k: int(v) for k, v in counts.items() if k in TOURIST_CLASSES}
    return _publish(
        context, homeloc, plots.classification_bar, (counts, name), "classification_report",
        "Locals and Tourists",
        metadata={"study_country": f"{name} ({code})",
                  **{k.lower() if k != CLASS_UNDETERMINED else k: v for k, v in counts.items()}},
    )


@dg.asset(
    **_COMMON,
    description=(
        "World map (Mollweide) of the Tourists' home countries: number of Tourists per home "
        "country on a log colour scale; the study country outlined in red (it has no Tourists "
        "by definition; filled blue); beside it the study country and its neighbours, framed on "
        "them, each labelled with its number of Tourists. "
        "Figure: `<output_dir>/figures/tourist_origins_map.png|svg`."
    ),
)
def tourist_origins_map(
    context: dg.AssetExecutionContext, homeloc: HomelocConfig, countries: gpd.GeoDataFrame
) -> dg.MaterializeResult:
    """Where the Tourists come from."""
    df = home_counts(classification_path(homeloc))
    name, code = _study(homeloc)
    tourists = (
        df[df["classification"].isin(TOURIST_CLASSES)]
        .groupby(["country_code", "country"], as_index=False)["users"].sum()
        .rename(columns={"users": "tourists"})
    )
    total = int(tourists["tourists"].sum())
    return _publish(
        context, homeloc, plots.choropleth,
        (countries, tourists.set_index("country_code")["tourists"]),
        "tourist_origins_map", "Tourists' home countries",
        kwargs=dict(
            title=f"Home countries of {total:,} Tourists visiting {name}",
            label="Tourists (log scale)",
            log=True,
            cmap="YlOrRd",
            highlight=code,
            highlight_label=f"study country: {name} (Locals, not Tourists)",
            highlight_fill="#4c72b0",
        ),
        extra_md="**Top home countries of Tourists**\n\n" + _top_table(tourists, "tourists"),
        metadata={"tourists": total, "origin_countries": len(tourists)},
    )


@dg.asset(
    **_COMMON,
    description=(
        "World map (Mollweide) of the share of all users with a home whose home is each country "
        "(log colour scale). The study country's own share is the share of Locals; it is outlined "
        "in red and its share named in the legend; beside it the study country and its "
        "neighbours, framed on them, each labelled with its share. Undetermined users count "
        "with their home country. Figure: `<output_dir>/figures/study_country_share_map.png|svg`."
    ),
)
def study_country_share_map(
    context: dg.AssetExecutionContext, homeloc: HomelocConfig, countries: gpd.GeoDataFrame
) -> dg.MaterializeResult:
    """Share of users per home country, the study country's share named."""
    df = home_counts(classification_path(homeloc))
    name, code = _study(homeloc)
    per_home = df.groupby(["country_code", "country"], as_index=False)["users"].sum()
    total = int(per_home["users"].sum())
    per_home["share"] = per_home["users"] / total if total else 0.0
    own = per_home.loc[per_home["country_code"] == code, "share"]
    own_share = float(own.iloc[0]) if len(own) else 0.0
    return _publish(
        context, homeloc, plots.choropleth,
        (countries, per_home.set_index("country_code")["share"] * 100),
        "study_country_share_map", "Share of users per home country",
        kwargs=dict(
            title=f"Home country of {total:,} users active in the data (share of users, %)",
            label="share of users with this home country, % (log scale)",
            log=True,
            cmap="viridis",
            highlight=code,
            highlight_label=f"{name}: {own_share:.1%} of users (Locals)",
            value_format=_percent,
        ),
        extra_md="**Largest home countries (share of users)**\n\n"
        + _top_table(per_home, "share", fmt="{:.2%}"),
        metadata={"users_with_home": total, "study_country_share": round(own_share, 6),
                  "home_countries": len(per_home)},
    )


def _percent(v: float) -> str:
    return f"{plots.format_number(v)}%"


REPORT_ASSETS: list = [classification_report, tourist_origins_map, study_country_share_map]


# ------------------------------------------------------------- region layers
def layer_report_name(layer: str) -> str:
    """The report asset (and figure file) of region layer ``layer``."""
    return f"local_home_regions_{layer}"


def local_home_region_counts(homeloc: HomelocConfig, region_homes) -> tuple[pd.DataFrame, object]:
    """Users whose home country is the study country (not undetermined), per home region.

    Batch by batch: each batch's classification is made again from its
    ``user_home_locations`` file with the classification's own settings
    (``classify_batch``, the same function ``user_classification`` uses) and
    joined to the batch's homes in the layer. Returns ``(counts, info)``,
    ``counts`` with ``region_code, region, users``.
    """
    from homeloc_assets.defs.classification import _as_partitioned
    from homeloc_assets.inference.rules import classify_batch

    info = read_run_info(classification_path(homeloc))
    parts = []
    layout = homeloc.layout
    for key, table in _as_partitioned(region_homes).iter_tables(
            ["user_guid", "region", "region_code"]):
        homes = pq.read_table(layout.table(USER_HOME_LOCATIONS, key))
        cls = classify_batch(homes, info, lambda asset, k=key: layout.table(asset, k))
        keep = pc.and_(pc.equal(cls["country_code"], info.study_country_code),
                   pc.not_equal(cls["classification"], CLASS_UNDETERMINED))
        users = cls.filter(keep).select(["user_guid"])
        joined = table.join(users, "user_guid", join_type="inner")
        if joined.num_rows:
            parts.append(joined.group_by(["region_code", "region"])
                         .aggregate([([], "count_all")]).to_pandas())
    if not parts:
        return pd.DataFrame({"region_code": [], "region": [], "users": []}), info
    df = pd.concat(parts, ignore_index=True).rename(columns={"count_all": "users"})
    return df.groupby(["region_code", "region"], as_index=False)["users"].sum(), info


def make_layer_reports(specs) -> list:
    """Per extra region layer one map: the home regions of the study country's residents.

    Only the Locals' side makes sense here: a Tourist's home is abroad, so the
    region where a Tourist spent most days inside a layer of the study country
    is where they travelled, not where they live (that is the landscape's job).
    """
    return [_layer_report(spec) for spec in specs]


def _layer_report(spec):
    """The report asset of one region layer (a closure over its spec)."""
    from homeloc_assets.geo.layers import layer_assets, load_regions

    _, home_asset = layer_assets(spec.name)
    name = layer_report_name(spec.name)

    @dg.asset(
        name=name,
        group_name="reports",
        kinds=_KINDS,
        deps=[USER_CLASSIFICATION],
        ins={"countries": dg.AssetIn(COUNTRIES), "region_homes": dg.AssetIn(home_asset)},
        automation_condition=dg.AutomationCondition.eager(),
        description=(
            f"Map of the study country in layer `{spec.name}` ({spec.spec}): users whose home "
            "country is the study country (Locals, with a study region also the Domestic "
            "tourists; undetermined users left out) per home region in the layer, log colour "
            "scale; the study region, if it is in this layer, outlined in red. "
            f"Figure: `<output_dir>/figures/{name}.png|svg`."
        ),
    )
    def _report(context: dg.AssetExecutionContext, homeloc: HomelocConfig,
                countries: gpd.GeoDataFrame, region_homes):
        counts, info = local_home_region_counts(homeloc, region_homes)
        if spec.kind == "h3":
            regions = plots.h3_cells_frame(counts["region_code"])
        else:
            regions = load_regions(spec).rename(columns={"country": "region",
                                                          "country_code": "region_code"})
        layer, _, code = info.study_region.partition("=")
        highlight = code if layer == spec.name else None
        total = int(counts["users"].sum())
        top = counts.rename(columns={"region": "country", "region_code": "country_code"})
        return _publish(
            context, homeloc, plots.region_layer_map,
            (countries, regions, counts.set_index("region_code")["users"],
             info.study_country_code),
            name, f"Home regions in layer {spec.name}",
            kwargs=dict(
                title=f"Home regions ({spec.name}) of {total:,} users living in "
                      f"{info.study_country}",
                label="users with their home here (log scale)",
                highlight=highlight,
                highlight_label=f"study region {code}" if highlight else None,
            ),
            extra_md=f"**Largest home regions ({spec.name})**\n\n"
            + _top_table(top, "users"),
            metadata={"users": total, "regions": len(counts), "layer": str(spec)},
        )

    return _report
