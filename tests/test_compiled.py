"""Compiled segments give the eager answers: classes, exits and confidences, for every rule, at
batch sizes 1 and more, and for the main output alone (a threshold above 1)."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo

from eed.inference.compiled import compiled_runner
from eed.inference.early_exit import predict
from eed.metrics.anytime import ABOVE_ONE, EXIT_RULES, rule_scores


@pytest.fixture(scope="module")
def model_and_images(tiny_trained):  # conftest: classifiers that disagree, confidences that spread
    model, images, _ = tiny_trained
    return model, images


@pytest.fixture(scope="module")
def compiled(model_and_images):
    model, images = model_and_images
    return compiled_runner(model, images.shape[-1])


def far_threshold(model, images, rule: str) -> float:
    """A threshold that lets some samples out early and keeps others, far from every exit's score (fused
    kernels round a little differently: a score at the threshold could go either way)."""
    with torch.inference_mode():
        scores = rule_scores(torch.stack(model(images).logits), rule)[:-1]
    candidates = [t / 400 for t in range(1, 400)]
    best = max(
        candidates,
        key=lambda t: (
            float((scores - t).abs().min()) if 0.1 < float((scores >= t).any(dim=0).double().mean()) < 0.9 else -1.0
        ),
    )
    assert float((scores - best).abs().min()) > 1e-4
    return best


@pytest.mark.parametrize("rule", EXIT_RULES)
def test_compiled_answers_equal_eager_ones(model_and_images, compiled, rule):
    model, images = model_and_images
    threshold = far_threshold(model, images, rule)
    for batch in (images, images[:1], images[1:2], images[:7]):
        eager = predict(model, batch, threshold, rule=rule)
        fast = predict(model, batch, threshold, rule=rule, runner=compiled)
        assert torch.equal(fast.exit_index, eager.exit_index) and torch.equal(fast.classes, eager.classes)
        assert torch.allclose(fast.confidence, eager.confidence, atol=1e-5)
    assert len(set(predict(model, images, threshold, rule=rule).exit_index.tolist())) > 1


def test_compiled_main_output_alone_equals_eager(model_and_images, compiled):
    model, images = model_and_images
    for batch in (images, images[:1]):
        eager, fast = predict(model, batch, ABOVE_ONE), predict(model, batch, ABOVE_ONE, runner=compiled)
        assert torch.equal(fast.classes, eager.classes) and fast.exit_index.eq(model.num_classifiers - 1).all()
        assert torch.allclose(fast.confidence, eager.confidence, atol=1e-5)


def test_counting_stages_needs_the_eager_pieces(model_and_images, compiled):
    model, images = model_and_images
    with pytest.raises(ValueError, match="count_stages counts with forward hooks, which compiled pieces do not run"):
        predict(model, images, 0.5, count_stages=True, runner=compiled)


def test_runners_compiled_one_after_another_are_all_compiled(model_and_images, compiled, make_tiny_net):
    """Every Segment (of every network) shares one forward: dynamo counts the graphs of all of them against one
    limit and, past it, runs the rest eagerly without a word (the serving benchmark's width-64 runner, built
    after the width-16 one, once did). A network of another shape compiled after this module's one runs
    compiled, reaching no limit, and answers as eager."""
    _, images = model_and_images
    torch.manual_seed(2)
    network = make_tiny_net(2).eval()  # twice the channels, random weights
    runner = compiled_runner(network, images.shape[-1])  # the warm-up fails if a limit is hit
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):  # and so does any later call
        fast = predict(network, images, 1.0, runner=runner)  # every segment runs (no score reaches 1)
    eager = predict(network, images, 1.0)
    assert torch.equal(fast.exit_index, eager.exit_index) and torch.equal(fast.classes, eager.classes)
