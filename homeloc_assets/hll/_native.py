"""The compiled kernel module of the engine (``_kernel.c``), or None where it was not built.

``_vector`` (the grouped union) and ``_hex`` (hex text of whole columns) call it; each keeps
its numpy path as the reference the kernel is tested against, and as the fallback.
"""

from __future__ import annotations

import warnings
from types import ModuleType

#: the interface version of ``_kernel.c`` this package calls (its ``KERNEL_VERSION``)
KERNEL_VERSION = 2


def _load() -> ModuleType | None:
    try:
        from . import _kernel  # type: ignore[attr-defined]
    except ImportError:
        return None
    if getattr(_kernel, "VERSION", None) != KERNEL_VERSION:
        warnings.warn("homeloc's compiled hll kernel is out of date (run `make setup` or "
                      "`pip install -e .` again); using the numpy path", stacklevel=2)
        return None
    return _kernel


KERNEL = _load()
