"""Progress bars without a refresh thread: the loops render them, between steps."""

import io
import threading

import pytest
import torch
from rich.console import Console

import eed.progress
from eed.config import load_config
from eed.engine.loops import train_one_epoch
from eed.engine.optim import build_optimizer, build_scheduler
from eed.engine.runtime import setup_runtime
from eed.models.registry import create_model
from eed.objectives import ExitEnsembleObjective
from eed.progress import RefreshClock, progress_bar, tracked


def terminal() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=120), out


def rich_refresh_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if type(t).__name__ == "_RefreshThread" and t.is_alive()]


def test_bar_has_no_refresh_thread_and_renders_when_told():
    console, out = terminal()
    with progress_bar(console) as progress:
        assert not rich_refresh_threads()
        task = progress.add_task("epoch 1", total=10, info="")
        progress.update(task, completed=3, info="loss 4.321")
        assert "loss 4.321" not in out.getvalue()  # nothing renders behind the loop's back
        progress.update(task, completed=4, info="loss 1.234", refresh=True)
        assert "loss 1.234" in out.getvalue() and "4/10" in out.getvalue()
    with progress_bar(console, enabled=False) as progress:
        assert progress is None


def test_refresh_clock():
    clock = RefreshClock(interval=3600)
    assert not clock.due()
    clock = RefreshClock(interval=0)
    assert clock.due() and clock.due()


def test_tracked_yields_everything_and_closes_an_abandoned_source(monkeypatch):
    monkeypatch.setattr(eed.progress, "REFRESH_S", 0.0)
    console, out = terminal()
    closed = []

    def source():
        try:
            yield from range(5)
        finally:
            closed.append(True)

    with progress_bar(console) as progress:
        assert list(tracked(source(), progress, "evaluating on test", 5)) == list(range(5))
        assert closed == [True] and not progress.tasks  # the task is gone when the loop ends
        for item in tracked(source(), progress, "evaluating on val", 5):
            if item == 1:
                break
        assert closed == [True, True]
    assert "evaluating on test" in out.getvalue()
    assert list(tracked(range(3), None, "no bar", 3)) == [0, 1, 2]


def tiny_epoch(steps: int):
    """The pieces ``train_one_epoch`` takes, for a tiny eed network and ``steps`` random batches."""
    config = load_config(None, ["train.device=cpu", "data.dataset=synthetic", "model.arch=resnet18", "model.width=4"])
    torch.manual_seed(0)
    model = create_model("resnet18", 10, 4, exits=True)
    objective = ExitEnsembleObjective("eed", config.loss, model.num_classifiers)
    optimizer = build_optimizer(model, config.train)
    batches = [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))) for _ in range(steps)]
    scheduler = build_scheduler(optimizer, config.train, len(batches))
    return model, objective, batches, optimizer, scheduler, setup_runtime(config.train)


@pytest.mark.parametrize("refresh_s", [0.0, 3600.0])
def test_training_epoch_renders_its_bar_between_steps(monkeypatch, refresh_s):
    monkeypatch.setattr(eed.progress, "REFRESH_S", refresh_s)
    model, objective, batches, optimizer, scheduler, runtime = tiny_epoch(3)
    console, out = terminal()
    with progress_bar(console) as progress:
        stats = train_one_epoch(
            model,
            objective,
            batches,
            optimizer,
            scheduler,
            runtime,
            epoch=1,
            classifier_names=model.classifier_names(),
            progress=progress,
        )
        assert not progress.tasks
    assert stats.completed and stats.images == 12
    rendered = out.getvalue()
    # Every step renders when due at once; otherwise only the last step does: always "3/3".
    assert "3/3" in rendered and "img/s" in rendered
    assert ("1/3" in rendered) == (refresh_s == 0.0)


def test_training_steps_read_nothing_back_from_the_device_between_renders(monkeypatch):
    """The finite-loss check and the bar's loss are read (a host sync on a GPU) at the render
    interval only: with no render due, a 6-step epoch reads the loss flag once, at its end."""
    monkeypatch.setattr(eed.progress, "REFRESH_S", 3600.0)
    model, objective, batches, optimizer, scheduler, runtime = tiny_epoch(6)
    reads = []
    original_bool, original_item = torch.Tensor.__bool__, torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "__bool__", lambda t: reads.append("bool") or original_bool(t))
    monkeypatch.setattr(torch.Tensor, "item", lambda t: reads.append("item") or original_item(t))
    steps = []
    train_one_epoch(
        model,
        objective,
        batches,
        optimizer,
        scheduler,
        runtime,
        epoch=1,
        classifier_names=model.classifier_names(),
        should_stop=lambda: steps.append(list(reads)) and False,
    )
    assert all(seen == [] for seen in steps[:-1])  # steps 1-5: nothing read back
    assert steps[-1] == ["bool"]  # step 6 ends the epoch: the finite check, once


def test_epoch_lines_fit_80_columns_in_percent_under_a_header():
    """One line per epoch within 80 columns for every registered network, accuracies in %,
    aligned under the header printed once."""
    from eed.engine.epochs import epoch_header as _epoch_header
    from eed.engine.epochs import epoch_line as _epoch_line
    from eed.models.registry import get_spec, list_backbones

    for arch in list_backbones():
        names = create_model(arch, 10, 8 if get_spec(arch).family == "cifar" else None).classifier_names()
        for has_val, prefix in ((True, "val/acc_"), (False, "test/epoch_acc_")):
            metrics = {
                "train/loss": 12.3456,
                "epoch_time_s": 1234.5,
                "throughput_img_s": 123456.0,
                **{f"{prefix}{name}": 0.999 for name in [*names, "ensemble"]},
            }
            header, line = _epoch_header(names, has_val), _epoch_line(200, 200, metrics, has_val)
            assert len(header) <= 80 and len(line) <= 80, (arch, header, line)
            assert line.count("99.9") == len(names) + 1 and "0.999" not in line
            # Each accuracy ends where its classifier's (right-aligned) column name ends.
            ends = [i + len(c) for i, c in _words(header) if c in {"e1", "e2", "e3", "main", "ens"}]
            number_ends = [i + len(w) for i, w in _words(line) if w == "99.9"]
            assert number_ends == ends, (header, line)


def _words(text: str) -> list[tuple[int, str]]:
    import re

    return [(m.start(), m.group()) for m in re.finditer(r"\S+", text)]


def test_no_bar_and_nothing_written_when_the_console_is_no_terminal():
    import io

    from eed.progress import progress_bar

    out = io.StringIO()
    with progress_bar(Console(file=out, width=80)) as progress:
        assert progress is None
    assert out.getvalue() == ""
