"""`eed prepare`: parse, call :func:`eed.stages.prepare.prepare`."""

from __future__ import annotations

from eed.commands.common import OverridesOption, ParamsOption, load
from eed.errors import guarded


@guarded
def prepare(
    params: ParamsOption = None,
    set_: OverridesOption = None,
) -> None:
    """Write the dataset's FFCV .beton files (train / val / test) and manifest to data.prepared_dir.

    Reads the raw dataset from data.root ($EED_DATA_ROOT wins), downloading CIFAR if it is
    missing. Does nothing when the prepared files are already up to date.
    """
    from eed.stages import prepare as stage

    stage.prepare(load(params, set_))
