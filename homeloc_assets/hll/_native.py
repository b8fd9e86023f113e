"""The compiled kernel module of the engine (``_kernel.c``), or None where it was not built.

``_vector`` (the grouped union) and ``_hex`` (hex text of whole columns) call it; each keeps
its numpy path as the reference the kernel is tested against, and as the fallback.
"""

from __future__ import annotations

from homeloc_assets.native import load_extension

#: the interface version of ``_kernel.c`` this package calls (its ``KERNEL_VERSION``)
KERNEL_VERSION = 2

KERNEL = load_extension("homeloc_assets.hll._kernel", KERNEL_VERSION)
