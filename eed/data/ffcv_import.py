"""Import FFCV without its side effect on torch.

``import ffcv`` runs ``Compiler.set_num_threads(1)``, which calls
``torch.set_num_threads(1)``: a CPU training process would silently drop to one thread.
Every module of the data layer calls :func:`import_ffcv` before its first FFCV import;
afterwards the modules are cached and importing them changes nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def keep_torch_threads() -> Iterator[None]:
    """Restore torch's intra-op thread count on exit (FFCV's loader also sets it)."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def import_ffcv() -> None:
    """Import the FFCV modules the data layer uses, keeping torch's thread count."""
    with keep_torch_threads():
        import ffcv.fields.decoders
        import ffcv.loader
        import ffcv.reader
        import ffcv.transforms
        import ffcv.writer  # noqa: F401
