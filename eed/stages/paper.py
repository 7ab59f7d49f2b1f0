"""``eed paper``: the reproduction report, the store's runs beside the paper's Tables I-IV and
Figs. 2-5 (:mod:`eed.reporting.paper_report`), as ``paper.md`` and a self-contained ``paper.html``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from eed import tracking
from eed.config import Config
from eed.errors import TrackingError
from eed.metrics.flops import arch_profile
from eed.models.registry import get_spec
from eed.paths import in_workspace
from eed.reporting.comparison import ComparisonTable, build_table, parse_tags
from eed.reporting.differences import differences
from eed.reporting.document import Block, Image, Paragraph, to_html, to_markdown
from eed.reporting.paper_report import ReportInputs, build_report, network_of
from eed.stages import stdout

# (figure, where it is logged: the training run or one of its stage runs, artifact path)
FIGURES = [
    (
        "Fig. 2: correct and wrong answers of each exit against the main output (test)",
        "evaluate",
        "figures/agreement.png",
    ),
    ("Fig. 3: training curves", "train", "figures/training_curves.png"),
    ("Fig. 4: representational dissimilarity matrices (test)", "rdm", "figures/rdm.png"),
    ("Fig. 5: every classifier's accuracy per epoch", "train", "figures/stability.png"),
]


def paper(
    config: Config,
    experiments: Sequence[str] = (),
    *,
    tags: Sequence[str] = (),
    run_ids: Sequence[str] = (),
    out: Path | None = None,
    tracking_uri: str | None = None,
    against: str | None = None,
) -> list[Path]:
    """Build the report from the runs selected as ``eed compare`` selects them; returns the files."""
    tracking_uri = tracking_uri or tracking.resolve_tracking_uri(config)
    experiments = [] if run_ids else list(experiments or [config.tracking.experiment])
    runs = tracking.find_runs(tracking_uri, experiments=experiments, tags=parse_tags(tags), run_ids=run_ids)
    selected = build_table(runs, "test")
    if not selected.rows:
        raise TrackingError(
            f"no finished training runs with test metrics in {tracking_uri} ({len(runs)} runs found): nothing to report"
        )
    max_table = build_table(runs, "test_max")
    out_dir = Path(out or in_workspace(config.paths.out_dir) / "paper")
    inputs = ReportInputs(
        selected,
        max_table if max_table.rows else None,
        differences(selected, against),
        flops_profiles(selected),
        figures(tracking_uri, selected, out_dir / "figures"),
        store=tracking_uri,
    )
    blocks = build_report(inputs)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown, page = out_dir / "paper.md", out_dir / "paper.html"
    markdown.write_text(to_markdown(blocks, out_dir))
    page.write_text(to_html(blocks, "eed: reproduction report"))
    stdout().print(
        f"Wrote {markdown} and {page} ({len(selected.rows)} configurations, "
        f"{sum(row.n for row in selected.rows)} runs)",
        highlight=False,
    )
    return [markdown, page]


def flops_profiles(table: ComparisonTable) -> list:
    """Each network of the table at each width it was trained at, and at its own width."""
    pairs = {}
    for row in table.rows:
        _, arch = network_of(row)
        width = row.key.get("model.width", "")
        own = get_spec(arch).default_width
        for each in ([int(width)] if width.isdigit() else []) + [own]:
            pairs[(arch, each)] = None
    return [arch_profile(arch, width=width) for arch, width in pairs]


def figures(tracking_uri: str, table: ComparisonTable, folder: Path) -> list[Block]:
    """Figs. 2-5 of one run per method (the first seed of the method's first configuration); a
    line for each one that run did not log."""
    found: list[Block] = []
    for method in dict.fromkeys(row.key.get("method", "?") for row in table.rows):
        row = next(row for row in table.rows if row.key.get("method") == method)
        run_id, seed = row.run_ids[0], row.seeds[0]
        sources = {"train": run_id, **tracking.stage_runs(tracking_uri, run_id)}
        for caption, stage, path in FIGURES:
            if stage in sources:
                local = tracking.downloaded_artifact(tracking_uri, sources[stage], path, folder / method / stage)
                if local is not None:
                    found.append(Image(f"{caption}: {row.label}, seed {seed} (run {run_id})", local))
                    continue
            how = f"`eed {stage} {run_id}` makes it" if stage != "train" else "it was trained before eed logged it"
            found.append(Paragraph(f"{caption.split(':')[0]} of {row.label}, seed {seed}: not logged ({how})."))
    return found
