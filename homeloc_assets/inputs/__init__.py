"""Input files: planning user batches by seeking and reading/validating them (no Dagster here).

``plan`` cuts a big CSV sorted by user_guid into byte ranges of whole users;
``reader`` turns one range into validated rows and per-line rejects;
``errors`` holds :class:`InputError`, raised for file-level problems only.
"""

from homeloc_assets.inputs.errors import InputError
from homeloc_assets.inputs.plan import (
    COLUMNS,
    Batch,
    BatchPlan,
    file_fingerprint,
    plan_batches,
    read_header,
)
from homeloc_assets.inputs.reader import (
    EXPORTED_REJECTS_SCHEMA,
    REJECTS_SCHEMA,
    ROWS_SCHEMA,
    BatchRows,
    find_user,
    parse_bytes,
    read_batch,
)

__all__ = [
    "COLUMNS",
    "EXPORTED_REJECTS_SCHEMA",
    "REJECTS_SCHEMA",
    "ROWS_SCHEMA",
    "Batch",
    "BatchPlan",
    "BatchRows",
    "InputError",
    "file_fingerprint",
    "find_user",
    "parse_bytes",
    "plan_batches",
    "read_batch",
    "read_header",
]
