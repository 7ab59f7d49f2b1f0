"""The index of a ``.beton`` file: its header, field names, per-sample metadata and allocation
table, read with numpy alone.

The tensor backend, evaluation and the RDM stage need only this index (the pixels are then
read from a memory map), and importing FFCV to get it costs every such process ~2.5 s: its
package import JIT-compiles a numba dictionary (BENCHMARKS.md, "Test suite"). The layouts below
are FFCV 1.0's (``ffcv/types.py``, file format version 2) for the two field kinds ``eed
prepare`` writes; tests/test_beton_index.py checks this index against FFCV's own ``Reader``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eed.data.manifest import RERUN_HINT
from eed.errors import DataError

FORMAT_VERSION = 2
HEADER = np.dtype(
    [
        ("version", "<u2"),
        ("num_fields", "<u2"),
        ("page_size", "<u4"),
        ("num_samples", "<u8"),
        ("alloc_table_ptr", "<u8"),
    ],
    align=True,
)
FIELD_DESCRIPTOR = np.dtype([("type_id", "<u1"), ("name", ("<u1", 16)), ("arguments", ("<u1", (1024,)))], align=True)
ALLOCATION = np.dtype([("sample_id", "<u8"), ("ptr", "<u8"), ("size", "<u8")])
# FFCV's field type ids -> each sample's metadata record, for the fields eed writes.
FIELD_METADATA = {
    1: np.dtype("<i8"),  # IntField
    2: np.dtype([("mode", "<u1"), ("width", "<u2"), ("height", "<u2"), ("data_ptr", "<u8")]),  # RGBImageField
}


@dataclass(frozen=True)
class BetonIndex:
    file_name: str
    field_names: list[str]
    metadata: np.ndarray  # one record per sample; field i's column is "f{i}"
    alloc_table: np.ndarray  # (sample_id, ptr, size) of every stored blob

    def column(self, name: str) -> np.ndarray:
        """Field ``name``'s metadata of every sample."""
        if name not in self.field_names:
            raise DataError(
                f"{self.file_name} has no '{name}' field (fields: {', '.join(self.field_names)}); {RERUN_HINT}"
            )
        return self.metadata[f"f{self.field_names.index(name)}"]


def read_index(path: str | Path) -> BetonIndex:
    """The index of the ``.beton`` file at ``path``; a missing, truncated or foreign file is a
    :class:`DataError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} is missing; {RERUN_HINT}")
    size = path.stat().st_size

    def unreadable(why: str) -> DataError:
        return DataError(f"{path}: not a readable .beton file ({why}); {RERUN_HINT}")

    if size < HEADER.itemsize:
        raise unreadable(f"{size} bytes, shorter than its header")
    header = np.fromfile(path, dtype=HEADER, count=1)[0]
    if header["version"] != FORMAT_VERSION:
        raise unreadable(f"format version {header['version']}, expected {FORMAT_VERSION}")
    descriptors = _read(path, FIELD_DESCRIPTOR, int(header["num_fields"]), HEADER.itemsize, size, unreadable)
    kinds = [int(type_id) for type_id in descriptors["type_id"]]
    if unknown := sorted(set(kinds) - set(FIELD_METADATA)):
        raise unreadable(f"field type ids {unknown}: not the image and label fields eed prepare writes")
    record = np.dtype([("", FIELD_METADATA[kind]) for kind in kinds], align=True)
    num_samples = int(header["num_samples"])
    metadata = _read(path, record, num_samples, HEADER.itemsize + descriptors.nbytes, size, unreadable)
    table_at = int(header["alloc_table_ptr"])
    if table_at > size or (size - table_at) % ALLOCATION.itemsize:
        raise unreadable("its allocation table is cut short")
    alloc_table = _read(path, ALLOCATION, (size - table_at) // ALLOCATION.itemsize, table_at, size, unreadable)
    names = [bytes(name).split(b"\0", 1)[0].decode("ascii", "replace") for name in descriptors["name"]]
    return BetonIndex(str(path), names, metadata, alloc_table)


def _read(path: Path, dtype: np.dtype, count: int, offset: int, size: int, unreadable) -> np.ndarray:
    if offset + count * dtype.itemsize > size:
        raise unreadable(f"{size} bytes, cut short before {count} records at byte {offset}")
    records = np.fromfile(path, dtype=dtype, count=count, offset=offset)
    records.setflags(write=False)
    return records
