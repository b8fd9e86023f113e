"""Embedded postgresql-hll engine: decode, count, union and add hlls exactly like PostgreSQL.

Owns everything about ``hll`` values outside the database: the storage
format (``_format``), the scalar operations with hll.c's semantics and
estimator (``_ops``), the ``hll_hash_*`` functions (``_hash``), the hex
text of whole columns (``_hex``), the validation of whole columns
(``_inspect``) and the grouped union for the pipeline (``_vector``;
:func:`grouped_union_arrow` gives the unions as one Arrow array; its estimator runs in
the compiled ``_kernel.c`` where it was built, else in numpy, the reference it is tested
against: :func:`kernel`, :func:`use_kernel`). A column
parsed once by :func:`parse_many` can be passed to the grouped functions
instead of its bytes, whole or as some of its rows (``ParsedColumn.take``).  No
Dagster here.

Why hand-written: python-hll on PyPI is unmaintained and fails to import on
numpy 2, and no maintained library reproduces postgresql-hll byte for byte
(its promotion rules EXPLICIT -> SPARSE -> FULL, the auto explicit threshold,
the sparse cutoff, and its exact floating-point estimator).  Results are
checked value by value against a live PostgreSQL with the extension.

Conventions:
  * an hll argument may be ``bytes``/``bytearray``/``memoryview`` or
    PostgreSQL bytea hex text (``'\\x1281...'``, any case, surrounding
    whitespace tolerated);
  * every malformed input raises :class:`HLLError` (a ``ValueError``) saying
    which value is wrong and why;
  * SQL NULL results map to None: ``cardinality`` of an UNDEFINED hll and
    ``union`` of zero inputs (hll_union_agg over zero rows).
"""

from ._format import (
    EMPTY,
    EXPLICIT,
    FULL,
    HLL,
    SPARSE,
    TYPE_NAMES,
    UNDEFINED,
    HLLError,
    Params,
    decode,
    encode,
    to_hex,
)
from ._hash import (
    hash_any,
    hash_bigint,
    hash_boolean,
    hash_bytea,
    hash_integer,
    hash_smallint,
    hash_text,
)
from ._hex import unhex_many
from ._inspect import InspectResult, ParsedColumn, inspect_many, params_of_code, parse_many
from ._ops import add, cardinality, describe, empty, union
from ._vector import grouped_cardinality, grouped_union, grouped_union_arrow, kernel, use_kernel

__all__ = [
    "EMPTY",
    "EXPLICIT",
    "FULL",
    "HLL",
    "SPARSE",
    "TYPE_NAMES",
    "UNDEFINED",
    "HLLError",
    "InspectResult",
    "ParsedColumn",
    "grouped_cardinality",
    "grouped_union",
    "grouped_union_arrow",
    "kernel",
    "use_kernel",
    "inspect_many",
    "params_of_code",
    "parse_many",
    "unhex_many",
    "Params",
    "add",
    "cardinality",
    "decode",
    "describe",
    "empty",
    "encode",
    "hash_any",
    "hash_bigint",
    "hash_boolean",
    "hash_bytea",
    "hash_integer",
    "hash_smallint",
    "hash_text",
    "to_hex",
    "union",
]
