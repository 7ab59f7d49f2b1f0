"""The one exception the data layer raises for anything wrong with the data itself."""

from __future__ import annotations


class DataError(RuntimeError):
    """Missing, corrupt or mismatched data. The message says which file and what to do."""
