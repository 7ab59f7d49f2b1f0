"""``eed compare``: tracked training runs as the paper's Tables I/II."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from eed import tracking
from eed.config import Config
from eed.errors import TrackingError
from eed.paths import in_workspace
from eed.reporting.comparison import TABLE_SPLITS, ComparisonTable, build_table, parse_tags
from eed.reporting.canvas import saved_files
from eed.reporting.figures import plot_comparison
from eed.stages import stdout
from eed.stages.common import choice


def compare(config: Config, experiments: Sequence[str] = (), *, tags: Sequence[str] = (),
            run_ids: Sequence[str] = (), split: str = "test",
            out: Path | None = None) -> tuple[ComparisonTable, list[Path]]:
    """``eed compare``: tracked training runs as the paper's Tables I/II, printed and written
    to ``comparison.md``, ``comparison.csv`` and ``figures/comparison.png`` in ``out``."""
    split = choice("--split", split, tuple(TABLE_SPLITS))
    tag_filter = parse_tags(tags)
    experiments = [] if run_ids else list(experiments or [config.tracking.experiment])
    tracking_uri = tracking.resolve_tracking_uri(config)
    runs = tracking.find_runs(tracking_uri, experiments=experiments, tags=tag_filter, run_ids=run_ids)
    table = build_table(runs, split)
    if not table.rows:
        selection = (f"run ids {', '.join(run_ids)}" if run_ids else
                     f"experiments {', '.join(experiments) or '(all)'}"
                     + (f" with tags {tag_filter}" if tag_filter else ""))
        raise TrackingError(f"no finished training runs with {TABLE_SPLITS[split][0]}main metrics among {selection} "
                            f"({len(runs)} runs found, {len(table.excluded)} of them with metrics but not FINISHED)")
    out_dir = Path(out or in_workspace(config.paths.out_dir) / "compare")
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = out_dir / "comparison.md"
    markdown.write_text(table.to_markdown())
    files = [markdown, table.write_csv(out_dir / "comparison.csv"),
             *saved_files(plot_comparison(table, out_dir / "figures" / "comparison.png"))]

    console = stdout()  # (soft-wrapped: long lines are left whole; these are paragraphs, wrapped at the width)
    console.print(table.rich_table(), soft_wrap=False)
    if table.constant:
        console.print(table.constant_line(), highlight=False, soft_wrap=False)
    for warning in table.warnings():
        console.print(f"[yellow]note:[/] {warning}", soft_wrap=False)
    if table.skipped:
        console.print(f"[yellow]note:[/] skipped {len(table.skipped)} runs without {TABLE_SPLITS[split][0]}main "
                      f"(unfinished or failed)", soft_wrap=False)
    console.print(f"Wrote {', '.join(str(f) for f in files)}")
    return table, files
