"""The one exception of the input layer.

``InputError`` means "this file cannot be processed as it is" (not a CSV, no
data, wrong columns, not sorted by user, changed since planning). Damage of a
single row never raises: it becomes a reject of that row.
"""

from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
    """A structural problem of an input file, with a message a user can act on.

    ``line`` (1-based physical line number in the file, when known) and
    ``offset`` (byte offset in the file, when known) locate the problem.
    """

    def __init__(self, message: str, *, line: int | None = None, offset: int | None = None) -> None:
        super().__init__(message)
        self.line = line
        self.offset = offset
