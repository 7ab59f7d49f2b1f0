"""Early exit: costs, the threshold sweep against a per-sample reference, its endpoints and
monotonicity, budget fitting, and `predict` on a briefly trained tiny multi-exit network
giving the sweep's predictions while running fewer stages (counted with hooks)."""

from __future__ import annotations

import math

import pytest
import torch

from eed.engine.loops import collect_outputs
from eed.inference.early_exit import predict
from eed.metrics.anytime import (
    ABOVE_ONE,
    EXIT_RULES,
    AnytimeCurve,
    ClassifierCosts,
    analyze,
    exit_indices,
    fit_budgets,
    rule_scores,
    sweep,
    threshold_grid,
)

NUM_CLASSES = 4
# Per stage, per exit head, main head (GFLOPs): exit i costs stages 1..i + heads 1..i.
COSTS = ClassifierCosts.from_parts([0.10, 0.20, 0.30], [0.05, 0.04], 0.01)


def test_classifier_costs_count_the_trunk_once():
    assert COSTS.standalone == pytest.approx([0.15, 0.34, 0.61])  # paper Table III: stages..i + head i
    assert COSTS.anytime == pytest.approx([0.15, 0.39, 0.70])  # + every exit head passed on the way

    class Profile:  # the shape of eed.metrics.flops.FlopsProfile
        stage_gflops, exit_gflops, main_head_gflops = [0.10, 0.20, 0.30], [0.05, 0.04], 0.01

    assert ClassifierCosts.from_profile(Profile()) == COSTS
    assert ClassifierCosts.from_parts([0.1, 0.2], [], 0.01).anytime == pytest.approx([0.31])  # baseline


def hand_logits(seed: int = 0, n: int = 60, k: int = 3, c: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, c, (n,), generator=generator)
    logits = 3 * torch.randn(k, n, c, generator=generator)
    logits[:, torch.arange(n), labels] += torch.linspace(0.5, 2.5, k)[:, None]
    return logits, labels


def reference_exit(logits: torch.Tensor, sample: int, threshold: float) -> int:
    """The rule written out for one sample: first classifier with confidence >= tau, else main."""
    k = logits.shape[0]
    for i in range(k - 1):
        if float(torch.softmax(logits[i, sample].double(), dim=0).max()) >= threshold:
            return i
    return k - 1


def test_sweep_matches_a_per_sample_reference():
    logits, labels = hand_logits()
    thresholds = torch.tensor([0.0, 0.3, 0.5, 0.7, 0.9, ABOVE_ONE], dtype=torch.float64)
    curve = sweep(logits, labels, COSTS.anytime, thresholds)
    for t, threshold in enumerate(thresholds.tolist()):
        exits = [reference_exit(logits, s, threshold) for s in range(labels.numel())]
        correct = [int(logits[e, s].argmax()) == int(labels[s]) for s, e in enumerate(exits)]
        assert float(curve.accuracy[t]) == pytest.approx(sum(correct) / len(correct))
        assert float(curve.gflops[t]) == pytest.approx(sum(COSTS.anytime[e] for e in exits) / len(exits))
        assert curve.exit_fractions[t].tolist() == pytest.approx([exits.count(i) / len(exits) for i in range(3)])


def test_curve_endpoints_and_monotone_cost():
    logits, labels = hand_logits(seed=1)
    curve = sweep(logits, labels, COSTS.anytime, threshold_grid(101))
    accuracy = (logits.argmax(dim=-1) == labels).double().mean(dim=1)
    assert float(curve.thresholds[0]) == 0.0 and float(curve.thresholds[-1]) > 1.0
    assert float(curve.accuracy[0]) == pytest.approx(float(accuracy[0]))  # tau = 0: all leave at exit 1
    assert float(curve.gflops[0]) == pytest.approx(COSTS.anytime[0])
    assert float(curve.accuracy[-1]) == pytest.approx(float(accuracy[-1]))  # tau > 1: all reach main
    assert float(curve.gflops[-1]) == pytest.approx(COSTS.anytime[-1])
    assert curve.exit_fractions[0].tolist() == [1.0, 0.0, 0.0] and curve.exit_fractions[-1].tolist() == [0, 0, 1]
    # As tau decreases, samples can only leave earlier: cost never increases.
    assert bool((curve.gflops[1:] >= curve.gflops[:-1] - 1e-12).all())
    # Told what the main output alone costs, tau > 1 costs that: nothing leaves early, no exit head runs.
    priced = sweep(logits, labels, COSTS.anytime, threshold_grid(101), main_only_cost=COSTS.main_only)
    assert float(priced.gflops[-1]) == pytest.approx(COSTS.main_only) == 0.10 + 0.20 + 0.30 + 0.01
    assert torch.equal(priced.gflops[:-1], curve.gflops[:-1])
    assert torch.allclose(curve.exit_fractions.sum(dim=1), torch.ones(len(curve.thresholds), dtype=torch.float64))


def test_saturated_confidence_leaves_at_tau_one_but_not_above():
    logits = torch.zeros(2, 1, 3)
    logits[0, 0, 1] = 200.0  # softmax gives exactly 1.0 in float32
    assert exit_indices(logits, torch.tensor([1.0, ABOVE_ONE], dtype=torch.float64)).flatten().tolist() == [0, 1]


def test_fit_budgets_picks_the_most_accurate_threshold_within_budget():
    curve = AnytimeCurve(
        names=["exit1", "main"],
        thresholds=torch.tensor([0.0, 0.5, 0.8, 1.0], dtype=torch.float64),
        accuracy=torch.tensor([0.5, 0.7, 0.69, 0.8], dtype=torch.float64),
        gflops=torch.tensor([1.0, 1.5, 1.4, 2.0], dtype=torch.float64),
        exit_fractions=torch.zeros(4, 2),
    )
    tight, middle, loose = fit_budgets(curve, [0.5, 1.6, 5.0])
    assert not tight.feasible and tight.threshold is None
    assert middle.threshold == 0.5 and middle.fit_accuracy == pytest.approx(0.7) and middle.fit_gflops <= 1.6
    assert loose.threshold == 1.0


# --------------------------------------------------------------------------- a trained tiny network


@pytest.fixture(scope="module")
def trained(tiny_trained):  # conftest: a tiny multi-exit network trained briefly on signal-in-noise images
    return tiny_trained


def test_trained_network_endpoints(trained):
    net, images, labels = trained
    collected = collect_outputs(net, [(images, labels)], "cpu")
    report = analyze(collected.logits, labels, COSTS, threshold_grid(21), net.classifier_names())
    curve = report.curve
    assert float(curve.accuracy[0]) == pytest.approx(report.classifier_accuracy[0])
    assert float(curve.accuracy[-1]) == pytest.approx(report.classifier_accuracy[-1])
    assert report.classifier_accuracy[-1] > 0.5  # it learned the signal
    within = curve.gflops[:-1]  # thresholds 0..1: the higher, the later samples leave, the dearer
    assert bool((within[1:] >= within[:-1] - 1e-12).all())
    # Above 1 nothing leaves early, so no exit head runs: the main output alone, cheaper than tau = 1.
    assert float(curve.gflops[-1]) == pytest.approx(COSTS.main_only) and COSTS.main_only < float(within[-1])


def test_predict_matches_the_sweep_and_runs_fewer_stages(trained):
    net, images, labels = trained
    collected = collect_outputs(net, [(images, labels)], "cpu")
    confidence = collected.logits.softmax(dim=-1).max(dim=-1).values[:-1]
    # A threshold that lets some samples out at each exit, far from every confidence (so a
    # different batch composition cannot flip a decision by rounding).
    candidates = [t / 100 for t in range(30, 100)]
    threshold = max(
        candidates,
        key=lambda t: (
            float((confidence - t).abs().min()) if 0.05 < float((confidence[0] >= t).double().mean()) < 0.8 else -1.0
        ),
    )
    assert float((confidence - threshold).abs().min()) > 1e-4

    curve = sweep(collected.logits, labels, COSTS.anytime, torch.tensor([threshold], dtype=torch.float64))
    expected_exit = exit_indices(collected.logits, torch.tensor([threshold], dtype=torch.float64))[0]
    expected_classes = collected.logits.argmax(dim=-1).gather(0, expected_exit[None])[0]

    seen = [0, 0, 0]  # samples per stage, counted by our own hooks
    hooks = [
        stage.register_forward_hook(lambda m, i, o, s=s: seen.__setitem__(s, seen[s] + i[0].shape[0]))
        for s, stage in enumerate(net.stages)
    ]
    try:
        prediction = predict(net, images, threshold, count_stages=True)
    finally:
        for hook in hooks:
            hook.remove()

    assert torch.equal(prediction.exit_index, expected_exit)
    assert torch.equal(prediction.classes, expected_classes)
    assert float((prediction.classes == labels).double().mean()) == pytest.approx(float(curve.accuracy[0]))
    cost = torch.tensor(COSTS.anytime, dtype=torch.float64)[prediction.exit_index].mean()
    assert float(cost) == pytest.approx(float(curve.gflops[0]))
    left_at = torch.bincount(expected_exit, minlength=3).tolist()
    n = len(labels)
    assert seen == prediction.stage_samples == [n, n - left_at[0], n - left_at[0] - left_at[1]]
    assert prediction.stages_run < 3 * n and left_at[0] > 0
    assert not net.training


@pytest.mark.parametrize("rule", EXIT_RULES)
def test_predict_under_each_rule_matches_the_sweep(trained, rule):
    """The cascade (samples removed from the batch as they leave) and the sweep on collected logits
    apply the same rule: the same exits and classes for every sample."""
    net, images, labels = trained
    collected = collect_outputs(net, [(images, labels)], "cpu")
    scores = rule_scores(collected.logits, rule)[:-1]  # the exits' scores (the main output takes the rest)
    # A threshold that lets some samples out early and keeps others, far from every score (a smaller
    # batch cannot flip a decision by rounding); patience's scores are multiples of 1/3, always far.
    candidates = [t / 200 for t in range(1, 200)]
    threshold = max(
        candidates,
        key=lambda t: (
            float((scores - t).abs().min()) if 0.05 < float((scores >= t).any(dim=0).double().mean()) < 0.95 else -1.0
        ),
    )
    assert float((scores - threshold).abs().min()) > 1e-4
    thresholds = torch.tensor([threshold], dtype=torch.float64)
    expected_exit = exit_indices(collected.logits, thresholds, rule)[0]
    prediction = predict(net, images, threshold, rule=rule)
    assert torch.equal(prediction.exit_index, expected_exit)
    assert torch.equal(prediction.classes, collected.logits.argmax(dim=-1).gather(0, expected_exit[None])[0])
    # Whatever the rule, the answer's confidence is the max softmax probability of the classifier it left at.
    top = collected.logits.softmax(dim=-1).max(dim=-1).values.gather(0, expected_exit[None])[0]
    assert torch.allclose(prediction.confidence, top, atol=1e-5)
    curve = sweep(collected.logits, labels, COSTS.anytime, thresholds, rule=rule)
    assert float((prediction.classes == labels).double().mean()) == pytest.approx(float(curve.accuracy[0]))
    assert 0 < int(expected_exit.lt(2).sum()) < len(labels)


def test_predict_endpoints(trained):
    net, images, labels = trained
    n = len(labels)
    first = predict(net, images, 0.0, count_stages=True)
    assert first.stage_samples == [n, 0, 0] and first.exit_index.eq(0).all()
    heads = []  # above 1 nothing can leave early: no exit head may run
    hooks = [branch.register_forward_hook(lambda m, i, o: heads.append(m)) for branch in net.exits]
    try:
        everything = predict(net, images, ABOVE_ONE, count_stages=True)
    finally:
        for hook in hooks:
            hook.remove()
    assert heads == [] and everything.stage_samples == [n, n, n] and everything.exit_index.eq(2).all()
    with torch.no_grad():
        main = net(images).main
    assert torch.equal(everything.classes, main.argmax(dim=1))
    assert torch.allclose(everything.confidence, main.softmax(dim=1).max(dim=1).values, atol=1e-6)
    assert math.isclose(
        float((first.classes == labels).double().mean()),
        float((net(images).logits[0].argmax(1) == labels).double().mean()),
    )


def test_anytime_figure_is_a_png(tmp_path, trained):
    import matplotlib.image

    from eed.reporting.figures import plot_anytime

    net, images, labels = trained
    collected = collect_outputs(net, [(images[:128], labels[:128])], "cpu")
    validation = collect_outputs(net, [(images[128:], labels[128:])], "cpu")
    report = analyze(
        collected.logits,
        collected.labels,
        COSTS,
        threshold_grid(11),
        net.classifier_names(),
        budgets=[0.1, 0.4],
        fit_logits=validation.logits,
        fit_labels=validation.labels,
        fit_split="val",
    )
    assert [fit.feasible for fit in report.budgets] == [False, True]
    assert report.budgets[1].gflops is not None and report.budgets[1].fit_gflops <= 0.4
    metrics = report.metrics()
    assert metrics["budget_0_4"]["threshold"] == report.budgets[1].threshold and "gflops_main" in metrics
    # The ensemble averages every classifier: every stage and every exit head, more than the main output alone.
    assert metrics["gflops_main"] == pytest.approx(0.10 + 0.20 + 0.30 + 0.01)
    assert metrics["gflops_ensemble"] == pytest.approx(0.10 + 0.20 + 0.30 + 0.01 + 0.05 + 0.04)
    path = plot_anytime(report, tmp_path / "anytime.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.image.imread(path).shape[0] > 50
