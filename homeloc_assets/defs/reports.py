"""Report assets: the seed notebook's pictures, in the UI and next to the exports.

Each report reads ``user_classification`` (only the columns it needs, batch by
batch, so it scales with the number of users) and ``countries``, shows a small
PNG in its materialisation metadata and writes the full figure as PNG and SVG
to ``<output_dir>/figures/`` (atomically). They update when
``user_classification`` does (eager automation) and can be materialised by hand.
"""

from pathlib import Path

import dagster as dg
import geopandas as gpd
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from homeloc_assets import plots
from homeloc_assets.defs.classification import classification_path, publication_dir
from homeloc_assets.defs.resources import HomelocConfig
from homeloc_assets.inference import CLASS_LOCAL, CLASS_TOURIST, CLASS_UNDETERMINED
from homeloc_assets.inference.rules import CLASS_DOMESTIC, CLASS_INTERNATIONAL
from homeloc_assets.provenance import read_run_info

FIGURES_DIR = "figures"
_KINDS = {"matplotlib", "png", "svg"}
_COMMON = {
    "group_name": "reports",
    "kinds": _KINDS,
    "deps": ["user_classification"],
    "ins": {"countries": dg.AssetIn("countries")},
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
    """Users per (home ``country_code``, ``country``, ``classification``), read batch by batch."""
    path = Path(path)
    if not path.exists():
        raise dg.Failure(f"user_classification is not materialized yet ({path})")
    parts = []
    pf = pq.ParquetFile(path)
    for batch in pf.iter_batches(columns=["country_code", "country", "classification"],
                                 batch_size=1_000_000):
        t = pa.Table.from_batches([batch])
        parts.append(
            t.group_by(["country_code", "country", "classification"]).aggregate([([], "count_all")])
            .to_pandas()
        )
    if not parts:
        return pd.DataFrame({"country_code": [], "country": [], "classification": [], "users": []})
    df = pd.concat(parts, ignore_index=True).rename(columns={"count_all": "users"})
    return df.groupby(["country_code", "country", "classification"], as_index=False)["users"].sum()


def _top_table(df: pd.DataFrame, value: str, n: int = 10, fmt: str = "{:,}") -> str:
    top = df.sort_values([value, "country"], ascending=[False, True]).head(n)
    lines = [f"| country | {value} |", "|---|---:|"]
    lines += [f"| {r.country} ({r.country_code}) | {fmt.format(getattr(r, value))} |"
              for r in top.itertuples()]
    return "\n".join(lines)


def _publish(context, config: HomelocConfig, fig, name: str, alt: str, extra_md: str = "",
             metadata: dict | None = None) -> dg.MaterializeResult:
    paths = plots.save_figure(fig, figures_dir(config), name)
    md = plots.figure_markdown(fig, alt)
    if extra_md:
        md = f"{md}\n\n{extra_md}"
    context.log.info(f"{name}: wrote {paths['png']} and {paths['svg']}")
    return dg.MaterializeResult(
        metadata={
            "preview": dg.MetadataValue.md(md),
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
    fig = plots.classification_bar(counts, name)
    return _publish(
        context, homeloc, fig, "classification_report", "Locals and Tourists",
        metadata={"study_country": f"{name} ({code})",
                  **{k.lower() if k != CLASS_UNDETERMINED else k: v for k, v in counts.items()}},
    )


@dg.asset(
    **_COMMON,
    description=(
        "World map (Mollweide) of the Tourists' home countries: number of Tourists per home "
        "country on a log colour scale; the study country outlined in red (it has no Tourists "
        "by definition; filled blue). Figure: `<output_dir>/figures/tourist_origins_map.png|svg`."
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
    fig = plots.choropleth(
        countries,
        tourists.set_index("country_code")["tourists"],
        title=f"Home countries of {total:,} Tourists visiting {name}",
        label="Tourists (log scale)",
        log=True,
        cmap="YlOrRd",
        highlight=code,
        highlight_label=f"study country: {name} (Locals, not Tourists)",
        highlight_fill="#4c72b0",
    )
    return _publish(
        context, homeloc, fig, "tourist_origins_map", "Tourists' home countries",
        extra_md="**Top home countries of Tourists**\n\n" + _top_table(tourists, "tourists"),
        metadata={"tourists": total, "origin_countries": len(tourists)},
    )


@dg.asset(
    **_COMMON,
    description=(
        "World map (Mollweide) of the share of all users with a home whose home is each country "
        "(log colour scale). The study country's own share is the share of Locals; it is outlined "
        "in red and its share named in the legend. Undetermined users count with their home "
        "country. Figure: `<output_dir>/figures/study_country_share_map.png|svg`."
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
    fig = plots.choropleth(
        countries,
        per_home.set_index("country_code")["share"] * 100,
        title=f"Home country of {total:,} users active in the data (share of users, %)",
        label="share of users with this home country, % (log scale)",
        log=True,
        cmap="viridis",
        highlight=code,
        highlight_label=f"{name}: {own_share:.1%} of users (Locals)",
    )
    return _publish(
        context, homeloc, fig, "study_country_share_map", "Share of users per home country",
        extra_md="**Largest home countries (share of users)**\n\n"
        + _top_table(per_home, "share", fmt="{:.2%}"),
        metadata={"users_with_home": total, "study_country_share": round(own_share, 6),
                  "home_countries": len(per_home)},
    )


REPORT_ASSETS: list = [classification_report, tourist_origins_map, study_country_share_map]
