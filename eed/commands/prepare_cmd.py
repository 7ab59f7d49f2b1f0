"""`eed prepare`: parse, call :func:`eed.data.prepare`, report."""

from __future__ import annotations

from pathlib import Path

from eed.commands.common import OverridesOption, ParamsOption, err_console, fail, load


def prepare(
    params: ParamsOption = Path("params.yaml"),
    set_: OverridesOption = None,
) -> None:
    """Write the dataset's FFCV .beton files (train / val / test) and manifest to data.prepared_dir.

    Reads the raw dataset from data.root ($EED_DATA_ROOT wins), downloading CIFAR if it is
    missing. Does nothing when the prepared files are already up to date.
    """
    from eed.data import DataError, prepare as prepare_data

    config = load(params, set_)
    try:
        result = prepare_data(config, console=err_console)
    except DataError as error:
        fail(str(error), code=1)
    if not result.up_to_date:
        err_console.print(f"[green]Wrote {len(result.files)} .beton files and the manifest to {result.directory}")
