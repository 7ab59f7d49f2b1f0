"""The few numbers a run is judged by, in one small file and one console table.

``results.json`` is the pipeline's only DVC metrics file, so ``dvc exp show`` and
``dvc metrics diff`` show short, unique keys (the detail files keep everything):

* ``test%.exit1`` ... ``test%.main``, ``test%.ens``: top-1 accuracy (%) of every
  classifier and of the ensemble on the evaluated split (the key is the split's name,
  ``test`` by default, then ``%``), with the weights of ``best.pt``;
* ``gflops.exit1`` ... ``gflops.main``, ``gflops.ens``: GFLOPs per image to obtain each output
  (the ensemble needs every stage and every head);
* ``early_exit.<budget>gf.test%`` and ``.gflops``: early-exit top-1 (%) and the GFLOPs per
  image spent, at each budget of ``eval.budgets`` (threshold fitted on val), ``0_035gf``
  for 0.035 GFLOPs (DVC splits keys at dots);
* ``early_exit.guaranteed.test%``, ``.gflops``, ``.drop_pts`` (percentage points below the
  main output), ``.held`` (1 when the drop stayed within ``eval.max_drop``) and ``.cost%`` (its
  GFLOPs in % of the main output alone, one of the options: at most 100 on val, where the cheapest
  is chosen; on test as measured): the guaranteed option.

Units follow the project's one rule (README, "Units"): a number is a fraction unless its name
says percent (``%``, ``_pct``, ``_pts`` or ``percent``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.table import Table

ENSEMBLE_KEY = "ens"
PERCENT = "%"  # ends the split key: short, for dvc exp show's columns


def _short(name: str) -> str:
    return ENSEMBLE_KEY if name == "ensemble" else name


def budget_key(budget: float) -> str:
    return f"{budget:g}".replace(".", "_") + "gf"


def classifier_names(evaluation: Mapping[str, Any], split: str) -> list[str]:
    """The classifiers of an evaluation, in network order, then ``ensemble``."""
    return [key.removeprefix("acc_") for key in evaluation[split] if key.startswith("acc_")]


def evaluation_split(evaluation: Mapping[str, Any]) -> str:
    """The split an evaluate stage's metrics.json reports (its one section holding ``acc_*``)."""
    splits = [
        key
        for key, value in evaluation.items()
        if isinstance(value, Mapping) and any(str(k).startswith("acc_") for k in value) and key != "running_ensemble"
    ]
    if len(splits) != 1:
        raise ValueError(f"evaluation metrics hold {len(splits)} splits with accuracies ({splits}), expected one")
    return splits[0]


def _gflops(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.4g}")


def headline(evaluation: Mapping[str, Any]) -> dict[str, Any]:
    """``results.json`` from the evaluate stage's ``metrics.json`` (accuracies in %, rounded
    to 0.01; GFLOPs to 4 significant digits)."""
    split = evaluation_split(evaluation)
    in_percent = split + PERCENT
    scores = evaluation[split]
    accuracy = {_short(name): round(100 * scores[f"acc_{name}"], 2) for name in classifier_names(evaluation, split)}
    anytime = evaluation.get("anytime", {})
    gflops = {
        _short(key.removeprefix("gflops_")): _gflops(value)
        for key, value in anytime.items()
        if key.startswith("gflops_")
    }
    early_exit = {}
    for key, fit in anytime.items():
        if key.startswith("budget_") and isinstance(fit, Mapping):
            budget = float(key.removeprefix("budget_").replace("_", "."))
            early_exit[budget_key(budget)] = {
                in_percent: None if fit.get("accuracy") is None else round(100 * fit["accuracy"], 2),
                "gflops": _gflops(fit.get("gflops")),
            }
    guaranteed = evaluation.get("guaranteed")
    if guaranteed:
        cost, main_only = guaranteed.get("gflops"), guaranteed.get("main_only_gflops")
        early_exit["guaranteed"] = {
            in_percent: round(100 * guaranteed["accuracy"], 2),
            "gflops": _gflops(cost),
            "drop_pts": round(100 * guaranteed["drop"], 2),
            "held": guaranteed["held"],
            "cost%": None if not (cost and main_only) else round(100 * cost / main_only, 1),
        }
    results: dict[str, Any] = {in_percent: accuracy, "gflops": gflops}
    if early_exit:
        results["early_exit"] = early_exit
    return results


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def results_table(evaluation: Mapping[str, Any], training: Mapping[str, Any] | None = None, caption: str = "") -> Table:
    """Every classifier's top-1/top-5 and GFLOPs, then the early-exit budgets, as one table;
    with the train stage's ``metrics.json``, also each output's max test accuracy over the
    epochs (the paper's number, selected on test)."""
    split = evaluation_split(evaluation)
    scores, anytime = evaluation[split], evaluation.get("anytime", {})
    maximum = (training or {}).get("test_max_over_epochs", {})
    main_gflops = anytime.get("gflops_main")
    title = f"Results on {split} ({evaluation.get('num_samples', '?')} images, best.pt)"
    table = Table(title=f"{title}\n{caption}" if caption else title, title_justify="left")
    for column in ("output", "top-1 %", "top-5 %", "GFLOPs", "% main"):
        table.add_column(column, justify="left" if column == "output" else "right", no_wrap=True)
    if maximum:
        table.add_column("max %", justify="right", no_wrap=True)
        table.caption = "max %: each output's best test top-1 over the epochs (the paper's number; selected on test)"
        table.caption_justify = "left"
    names = classifier_names(evaluation, split)
    best = max(scores[f"acc_{name}"] for name in names)
    for name in names:
        top1 = _pct(scores[f"acc_{name}"])
        cost = anytime.get(f"gflops_{name}")  # the ensemble's: every stage and every head (— in older files)
        row = [
            name,
            f"[bold]{top1}[/]" if scores[f"acc_{name}"] == best else top1,
            _pct(scores.get(f"top5_{name}")),
            "—" if cost is None else f"{cost:.4f}",
            "—" if cost is None or not main_gflops else f"{100 * cost / main_gflops:.0f}",
        ]
        if maximum:
            row.append(_pct(maximum.get(f"acc_{name}")))
        table.add_row(*row)
    budgets = [
        (key.removeprefix("budget_").replace("_", "."), fit)
        for key, fit in anytime.items()
        if key.startswith("budget_") and isinstance(fit, Mapping)
    ]
    guaranteed = evaluation.get("guaranteed")
    if budgets or guaranteed:  # one row per budget under a heading row, so that the table stays within 80 columns
        table.rows[-1].end_section = True
        rule = anytime.get("exit_rule", "confidence")
        table.add_row(f"early exit ({rule})", *[""] * (len(table.columns) - 1))  # τ fitted on val
    for budget, fit in budgets:
        feasible = fit.get("threshold") is not None
        cost = fit.get("gflops")
        row = [
            f"  ≤ {budget} GF, τ {fit['threshold']:.2f}" if feasible else f"  ≤ {budget} GF: no τ fits",
            _pct(fit.get("accuracy")),
            "",
            "—" if cost is None else f"{cost:.4f}",
            "—" if cost is None or not main_gflops else f"{100 * cost / main_gflops:.0f}",
        ]
        table.add_row(*row, *([""] if maximum else []))
    if guaranteed:
        cost = guaranteed.get("gflops")
        threshold = f", τ {guaranteed['threshold']:.2f}" if guaranteed.get("threshold") is not None else ", main only"
        outcome = "held" if guaranteed["held"] else "[bold]failed[/]"
        table.add_row(
            f"  drop ≤ {100 * guaranteed['max_drop']:g} pt{threshold}: {outcome}",
            _pct(guaranteed["accuracy"]),
            "",
            "—" if cost is None else f"{cost:.4f}",
            "—" if cost is None or not main_gflops else f"{100 * cost / main_gflops:.0f}",
            *([""] if maximum else []),
        )
    return table
