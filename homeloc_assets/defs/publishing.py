"""``homeloc_published``: switch the output folder to the current classification's files at once.

Every step downstream of ``user_classification`` writes into that
classification's generation folder (``publish``); this asset, last, checks the
set, writes its manifest and switches ``<out>/current``. Until then readers see
the previous set; if any step before it fails, nothing new is published.
"""

import dagster as dg

from homeloc_assets.defs.classification import classification_path
from homeloc_assets.defs.landscape import LANDSCAPE_ASSETS, LANDSCAPE_FILES
from homeloc_assets.defs.reports import REPORT_ASSETS
from homeloc_assets.defs.resources import HomelocConfig
from homeloc_assets.defs.rules import home_rule_sensitivity
from homeloc_assets.exports import EXPORT_FILES, exports_lock
from homeloc_assets.names import HOMELOC_EXPORTS, HOMELOC_PUBLISHED
from homeloc_assets.provenance import read_run_info
from homeloc_assets.publish import IncompleteSetError, publish

#: what must be complete before a set is published (every unpartitioned step after the exports)
_AFTER_EXPORTS = [k for a in (*REPORT_ASSETS, *LANDSCAPE_ASSETS, home_rule_sensitivity)
                  for k in a.keys if not a.partitions_def]


class PublishConfig(dg.Config):
    """What the set must hold before it is published (``homeloc run`` sets these by its flags)."""

    figures: bool = True
    landscape: bool = True


def required_files(config: PublishConfig) -> tuple[str, ...]:
    """The files a complete set has: the exports, and the sweep and landscape when expected."""
    extra = (("sensitivity.csv",) if config.figures else ()) + (
        LANDSCAPE_FILES if config.landscape else ())
    return (*EXPORT_FILES, *extra)


@dg.asset(
    name=HOMELOC_PUBLISHED,
    group_name="results",
    kinds={"python"},
    deps=[HOMELOC_EXPORTS, *_AFTER_EXPORTS],
    automation_condition=dg.AutomationCondition.eager(),
    description=(
        "Publishes the current classification's exports, figures and landscape files together: "
        "writes MANIFEST.json (size and sha256 of every file) into its generation folder and "
        "switches `<output>/current` to it with one atomic rename. Readers see the previous "
        "complete set until then."
    ),
)
def homeloc_published(context: dg.AssetExecutionContext, config: PublishConfig,
                      homeloc: HomelocConfig) -> dg.MaterializeResult:
    """Publish the generation named in the classification's RunInfo, once it is complete.

    On the platform the steps after the classification may finish in several
    runs; until the set is complete this records what it waits for and
    publishes nothing (the automation runs it again when the rest is done).
    """
    info = read_run_info(classification_path(homeloc))
    if not info.generation:
        raise dg.Failure("user_classification was made by an older homeloc: materialize it again")
    try:
        with exports_lock(homeloc.output_dir):
            manifest = publish(homeloc.output_dir, info.generation, required=required_files(config))
    except IncompleteSetError as exc:
        if not exc.missing:
            raise dg.Failure(str(exc)) from None
        waiting = ", ".join(exc.missing)
        context.log.warning(f"generation {info.generation} is not complete yet (no {waiting}): "
                            "the previous set stays published")
        return dg.MaterializeResult(metadata={"generation": info.generation, "published": False,
                                              "waiting_for": waiting})
    files = manifest["files"]
    context.log.info(f"published generation {info.generation}: {len(files)} files")
    return dg.MaterializeResult(metadata={
        "generation": info.generation,
        "published": True,
        "files": len(files),
        "bytes": sum(f["bytes"] for f in files.values()),
        "study_country": info.study_label,
    })
