"""Home-country inference: per-user country userdays, the home, the classification.

Pure functions over Arrow tables and numpy arrays; no Dagster.
"""

from homeloc_assets.inference.batch import BatchResult, process_batch
from homeloc_assets.inference.homes import (
    CLASS_LOCAL,
    CLASS_TOURIST,
    CLASS_UNDETERMINED,
    country_userdays,
    pick_homes,
)

__all__ = [
    "BatchResult",
    "CLASS_LOCAL",
    "CLASS_TOURIST",
    "CLASS_UNDETERMINED",
    "country_userdays",
    "pick_homes",
    "process_batch",
]
