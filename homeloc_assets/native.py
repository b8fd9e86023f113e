"""Loading of homeloc's compiled extensions (``hll/_kernel.c``, ``inputs/_scan.c``).

Both are optional (``setup.py``): where one was not built, its module's numpy path runs;
where it was built from older source (its ``VERSION`` is not the one its caller speaks),
a warning says to rebuild and the numpy path runs too. No Dagster here.
"""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType


def load_extension(name: str, version: int) -> ModuleType | None:
    """The compiled module ``name`` if it was built with interface ``version``, else None."""
    try:
        module = importlib.import_module(name)
    except ImportError:
        return None
    if getattr(module, "VERSION", None) != version:
        warnings.warn(f"homeloc's compiled {name} is out of date (run `make setup` or "
                      "`pip install -e .` again); using the numpy path", stacklevel=2)
        return None
    return module
