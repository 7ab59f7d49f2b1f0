"""RDMs: symmetric, zero diagonal, equal to 1 - numpy's Pearson correlation; the summary
against a direct numpy computation; seeded, class-sorted sample selection; the figure."""

from __future__ import annotations

import json

import matplotlib.image
import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from eed.engine.loops import collect_outputs
from eed.metrics.rdm import (
    compute_rdms,
    correlation_distance,
    layer_activations,
    select_classes,
    select_samples,
    summarize_rdm,
)
from eed.models.backbone import Backbone
from eed.models.multi_exit import MultiExitNet, conv_bn_relu
from eed.reporting.files import write_rdm_outputs


def test_correlation_distance_is_one_minus_pearson():
    activations = torch.randn(30, 12, generator=torch.Generator().manual_seed(0))
    rdm = correlation_distance(activations)
    assert torch.equal(rdm, rdm.T)
    assert torch.count_nonzero(rdm.diagonal()) == 0
    np.testing.assert_allclose(rdm.numpy(), 1 - np.corrcoef(activations.double().numpy()), atol=1e-12)
    assert float(rdm.min()) >= 0.0 and float(rdm.max()) <= 2.0


def test_constant_activations_count_as_uncorrelated():
    activations = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    activations[2] = 0.0  # e.g. a sample whose ReLU features are all zero
    rdm = correlation_distance(activations)
    assert rdm[2].tolist() == pytest.approx([1.0, 1.0, 0.0, 1.0])
    assert not torch.isnan(rdm).any()


def test_summary_matches_numpy():
    generator = torch.Generator().manual_seed(2)
    labels = torch.tensor([0] * 5 + [1] * 4 + [2] * 6)
    activations = torch.randn(15, 8, generator=generator) + 2 * torch.randn(3, 8, generator=generator)[labels]
    rdm = correlation_distance(activations).numpy()
    y = labels.numpy()
    within, between = [], []
    for i in range(len(y)):
        for j in range(len(y)):
            if i != j:
                (within if y[i] == y[j] else between).append(rdm[i, j])
    summary = summarize_rdm(torch.from_numpy(rdm), labels)
    assert summary.within == pytest.approx(np.mean(within))
    assert summary.between == pytest.approx(np.mean(between))
    assert summary.ratio == pytest.approx(np.mean(between) / np.mean(within))
    assert summary.ratio > 1  # class structure was put in


def test_sample_selection_is_seeded_and_sorted_by_class():
    labels = torch.randint(0, 20, (1000,), generator=torch.Generator().manual_seed(3))
    chosen = select_samples(labels, 100, seed=0)
    assert torch.equal(chosen, select_samples(labels, 100, seed=0))
    assert not torch.equal(chosen, select_samples(labels, 100, seed=1))
    assert len(set(chosen.tolist())) == 100
    picked = labels[chosen]
    assert bool((picked[1:] >= picked[:-1]).all())
    classes = select_classes(picked, 10, seed=0)
    assert len(classes) == 10 and classes == sorted(classes) and set(classes) <= set(picked.tolist())
    with pytest.raises(ValueError, match="asked for 1001 samples"):
        select_samples(labels, 1001, seed=0)


def test_rdms_of_a_tiny_network(tmp_path):
    torch.manual_seed(0)
    backbone = Backbone(
        stem=conv_bn_relu(3, 8, 1),
        stages=[conv_bn_relu(8, 8, 1), conv_bn_relu(8, 12, 2), conv_bn_relu(12, 16, 2)],
        stage_channels=[8, 12, 16],
        pool=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
        fc=nn.Linear(16, 6),
    )
    net = MultiExitNet(backbone).eval()
    generator = torch.Generator().manual_seed(4)
    labels = torch.randint(0, 6, (120,), generator=generator)
    images = torch.randn(120, 3, 16, 16, generator=generator)
    collected = collect_outputs(
        net, [(images[:64], labels[:64]), (images[64:], labels[64:])], "cpu", with_features=True
    )
    indices = select_samples(collected.labels, 50, seed=0)
    activations = layer_activations(collected, net.classifier_names(), indices, ["main", "exit1"])
    assert set(activations) == {"F_main", "Z_main", "F_exit1", "Z_exit1"}
    assert activations["F_main"].shape == (50, 16) and activations["Z_main"].shape == (50, 6)
    result = compute_rdms(activations, collected.labels[indices], indices, subset_class_count=3, seed=0)
    for layer, rdm in result.rdms.items():
        assert rdm.shape == (50, 50) and torch.equal(rdm, rdm.T) and torch.count_nonzero(rdm.diagonal()) == 0
        expected = summarize_rdm(rdm, result.labels)
        assert result.summaries[layer] == expected
    assert len(result.subset_classes) == 3 and set(result.subset_labels.tolist()) == set(result.subset_classes)
    files = write_rdm_outputs(result, tmp_path)
    metrics = json.loads((tmp_path / "rdm.json").read_text())
    assert metrics["Z_main"]["ratio"] == pytest.approx(result.summaries["Z_main"].ratio)
    assert metrics["subset"]["F_exit1"]["within"] == pytest.approx(result.subset_summaries["F_exit1"].within)
    figure = files[-1]
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and matplotlib.image.imread(figure).shape[0] > 100
    with pytest.raises(ValueError, match="unknown classifier"):
        layer_activations(collected, net.classifier_names(), indices, ["exit9"])


def test_rdm_help():
    import typer

    from eed.commands.rdm_cmd import rdm

    app = typer.Typer()
    app.command()(rdm)
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0 and "--classifier" in result.output and "--seed" in result.output


def test_run_rdm_end_to_end(tmp_path, monkeypatch):
    """The whole `eed rdm` on a checkpoint, with the data layer faked at its seam."""
    from types import SimpleNamespace

    import eed.data
    from eed.config import load_config
    from eed.data.catalog import Normalization
    from eed.engine.checkpoint import Checkpoint, NetworkSpec, TrainState
    from eed.models.registry import create_model
    from eed.stages.rdm import rdm

    class_names = [f"class_{i:03d}" for i in range(10)]
    generator = torch.Generator().manual_seed(6)
    split_labels = torch.randint(0, 10, (300,), generator=generator)
    split_images = torch.randint(0, 256, (300, 3, 32, 32), generator=generator, dtype=torch.uint8)

    def read_split(config, split, indices):
        return SimpleNamespace(
            images=split_images[indices],
            labels=split_labels[indices],
            normalization=Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
        )

    manifest = SimpleNamespace(num_classes=10, class_names=class_names, split_path=lambda split: f"{split}.beton")
    monkeypatch.setattr(eed.data, "load_manifest", lambda config: manifest, raising=False)
    monkeypatch.setattr(eed.data, "read_labels", lambda path: split_labels.numpy(), raising=False)
    monkeypatch.setattr(eed.data, "read_split", read_split, raising=False)
    config = load_config(
        None,
        [
            "model.arch=resnet18",
            "model.width=4",
            "data.dataset=synthetic",
            "train.device=cpu",
            "eval.rdm_samples=120",
            "eval.rdm_classes=4",
        ],
    )
    torch.manual_seed(0)
    model = create_model("resnet18", 10, 4)
    checkpoint = Checkpoint(
        NetworkSpec("resnet18", 10, 4, True, class_names=tuple(class_names)),
        model.state_dict(),
        config.model_dump(),
        TrainState(epoch=1),
    ).save(tmp_path / "best.pt")
    run = rdm(config, str(checkpoint), out=tmp_path / "out", classifiers=["main", "exit2"], log=False)
    result = run.result
    assert torch.equal(result.sample_indices, select_samples(split_labels, 120, 0))
    assert torch.equal(result.labels, split_labels[result.sample_indices])
    assert set(result.rdms) == {"F_main", "Z_main", "F_exit2", "Z_exit2"}
    assert len(result.subset_classes) == 4
    # Z_main's RDM from a direct forward pass of the same normalized images.
    images = (split_images[result.sample_indices].float() / 255 - 0.5) / 0.25
    with torch.no_grad():
        logits = model.eval()(images).main
    np.testing.assert_allclose(result.rdms["Z_main"].numpy(), 1 - np.corrcoef(logits.double().numpy()), atol=1e-5)
    assert json.loads((tmp_path / "out" / "rdm.json").read_text())["num_samples"] == 120
