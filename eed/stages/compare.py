"""``eed compare``: tracked training runs as the paper's Tables I/II."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from eed import tracking
from eed.config import Config
from eed.errors import ConfigError, TrackingError
from eed.methods import method_names
from eed.paths import in_workspace
from eed.reporting import differences as diffs
from eed.reporting.canvas import saved_files
from eed.reporting.comparison import TABLE_SPLITS, ComparisonTable, build_table, parse_tags
from eed.reporting.figures import plot_comparison, plot_differences
from eed.stages import stdout
from eed.stages.common import choice


def compare(
    config: Config,
    experiments: Sequence[str] = (),
    *,
    tags: Sequence[str] = (),
    run_ids: Sequence[str] = (),
    split: str = "test",
    out: Path | None = None,
    tracking_uri: str | None = None,
    against: str | None = None,
) -> tuple[ComparisonTable, list[Path]]:
    """``eed compare``: tracked training runs as the paper's Tables I/II, printed and written
    to ``comparison.md``, ``comparison.csv`` and ``figures/comparison.png`` in ``out``; then each
    row's difference from its reference row (method ``against``, default branchynet; the
    all-classifier teacher for a teacher subset) with its interval, into the same Markdown,
    ``differences.csv`` and ``figures/differences.png``. The runs are read from ``tracking_uri``
    (default: ``config``'s store)."""
    split = choice("--split", split, tuple(TABLE_SPLITS))
    if against is not None:
        choice("--against", against, tuple(method_names()))
    tag_filter = parse_tags(tags)
    experiments = [] if run_ids else list(experiments or [config.tracking.experiment])
    tracking_uri = tracking_uri or tracking.resolve_tracking_uri(config)
    runs = tracking.find_runs(tracking_uri, experiments=experiments, tags=tag_filter, run_ids=run_ids)
    table = build_table(runs, split)
    if not table.rows:
        selection = (
            f"run ids {', '.join(run_ids)}"
            if run_ids
            else f"experiments {', '.join(experiments) or '(all)'}" + (f" with tags {tag_filter}" if tag_filter else "")
        )
        raise TrackingError(
            f"no finished training runs with {TABLE_SPLITS[split][0]}main metrics among {selection} "
            f"({len(runs)} runs found, {len(table.excluded)} of them with metrics but not FINISHED)"
        )
    out_dir = Path(out or in_workspace(config.paths.out_dir) / "compare")
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = out_dir / "comparison.md"
    if against is not None and not any(row.key.get("method") == against for row in table.rows):
        raise ConfigError(f"--against {against}: no row of the table has method {against}")
    found = diffs.differences(table, against)
    markdown.write_text(table.to_markdown() + (f"\n{diffs.to_markdown(found, table.columns)}" if found else ""))
    files = [
        markdown,
        table.write_csv(out_dir / "comparison.csv"),
        *saved_files(plot_comparison(table, out_dir / "figures" / "comparison.png")),
    ]
    if found:
        files += [
            diffs.write_csv(found, table.columns, out_dir / "differences.csv"),
            *saved_files(
                plot_differences(
                    found,
                    table.columns,
                    [table.column_title(c) for c in table.columns],
                    out_dir / "figures" / "differences.png",
                )
            ),
        ]

    console = stdout()  # (soft-wrapped: long lines are left whole; these are paragraphs, wrapped at the width)
    console.print(table.rich_table(), soft_wrap=False)
    if table.constant:
        console.print(table.constant_line(), highlight=False, soft_wrap=False)
    for warning in table.warnings():
        console.print(f"[yellow]note:[/] {warning}", soft_wrap=False)
    if found:
        console.print(diffs.rich_table(found, table.columns), soft_wrap=False)
    if table.skipped:
        console.print(
            f"[yellow]note:[/] skipped {len(table.skipped)} runs without {TABLE_SPLITS[split][0]}main "
            f"(unfinished or failed)",
            soft_wrap=False,
        )
    console.print(f"Wrote {', '.join(str(f) for f in files)}")
    return table, files
