"""The home-rule sensitivity asset: thresholds swept over the per-user homes of the classification.

Thin: reads the homes partitions (only the evidence columns) and the
classification's own settings (``provenance.RunInfo``), calls
:func:`homeloc_assets.sensitivity.run_sensitivity` — the same function as
``homeloc sensitivity`` — and shows the table and the figure in the UI.
"""

import dagster as dg
import pyarrow as pa

from homeloc_assets import plots
from homeloc_assets.defs.classification import (
    classification_path,
    classified_batches,
    publication_dir,
)
from homeloc_assets.defs.reports import UI_PNG_DEPENDS, ui_figure_markdown, ui_png
from homeloc_assets.defs.resources import HomelocConfig
from homeloc_assets.figure_cache import cached_derived
from homeloc_assets.inference.rules import rule_of
from homeloc_assets.names import HOME_RULE_SENSITIVITY, USER_CLASSIFICATION, USER_HOME_LOCATIONS
from homeloc_assets.provenance import read_run_info
from homeloc_assets.sensitivity import RULE_COLUMNS, run_sensitivity, sensitivity_figure
from homeloc_assets.tables import PartitionedTables


@dg.asset(
    name=HOME_RULE_SENSITIVITY,
    group_name="reports",
    kinds={"pyarrow", "csv", "png"},
    deps=[USER_CLASSIFICATION],
    ins={"user_home_locations": dg.AssetIn(USER_HOME_LOCATIONS)},
    automation_condition=dg.AutomationCondition.eager(),
    description=(
        "Home rules swept over the per-user homes (never the input again): per setting of min "
        "userdays / share / margin the users classified, Locals, Tourists, the Local:Tourist ratio "
        "and the share of users whose class differs from the chosen setting (figure shown here); "
        "<output>/sensitivity.csv and figures/sensitivity.png."
    ),
)
def home_rule_sensitivity(context: dg.AssetExecutionContext, homeloc: HomelocConfig,
                          user_home_locations: PartitionedTables) -> dg.MaterializeResult:
    """Sweep the default grid around the classification's own rule."""
    info = read_run_info(classification_path(homeloc))
    homes = classified_batches(homeloc, user_home_locations)
    table = pa.concat_tables([t for _, t in homes.iter_tables(RULE_COLUMNS)])
    chosen = rule_of(info)
    result = run_sensitivity(table, info.study_country_code, chosen, publication_dir(homeloc),
                             log2m=info.hll_log2m, explicit_max=info.hll_explicit_max,
                             figure_cache=homeloc.layout.figure_cache)
    rows = result.table.to_pylist()
    lines = ["| min userdays | min share | min margin | classified | Locals | Tourists | changed |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['min_userdays']:g} | {r['min_share']:g} | {r['min_margin']:g} | "
              f"{r['classified']:,} | {r['locals']:,} | {r['tourists']:,} | {r['changed_share']:.1%} |"
              for r in rows if r["min_margin"] == chosen.min_margin]
    md = "\n".join(lines)
    png = cached_derived(ui_png, result.figure_path, homeloc.layout.figure_cache,
                         UI_PNG_DEPENDS)
    figure = ui_figure_markdown(context.instance, png,
                                "sensitivity", "sensitivity") \
        or plots.figure_markdown(sensitivity_figure(result.table, chosen), "sensitivity", dpi=80)
    context.log.info(f"sensitivity: {len(rows)} settings -> {result.csv_path}")
    return dg.MaterializeResult(metadata={
        "settings": len(rows),
        "table": dg.MetadataValue.path(str(result.csv_path.resolve())),
        "figure": dg.MetadataValue.md(figure),  # inline on the asset page (see reports)
        "preview": dg.MetadataValue.md(md),
    })
