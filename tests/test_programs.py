"""The network as torch.export programs: the cascade of the exported segments gives what
`predict` gives (classes, exits, confidences), each prefix program gives its classifier's
logits, the programs take any batch size, and the manifest says what each file is."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from eed.inference.early_exit import cascade, predict
from eed.inference.programs import MANIFEST, export_programs, load_programs
from eed.models.registry import create_model

NUM_CLASSES = 10


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("resnet18", NUM_CLASSES, 4)
    with torch.no_grad():  # BatchNorm running statistics that are not the identity
        for _ in range(3):
            model.train()(torch.randn(32, 3, 32, 32))
    folder = tmp_path_factory.mktemp("programs")
    files = export_programs(model.eval(), 32, folder)
    return model, folder, files


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(40, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def splitting_threshold(model, images) -> float:
    """The median exit-1 confidence: some samples leave at exit 1, the rest go on."""
    with torch.no_grad():
        first = model(images).logits[0].softmax(dim=-1).max(dim=-1).values
    return float(first.median())


def test_cascade_of_exported_segments_equals_predict(exported, images):
    model, folder, _ = exported
    pieces = load_programs(folder, "segment")
    assert len(pieces) == model.num_classifiers
    tau = splitting_threshold(model, images)
    reference = predict(model, images, tau)
    assert len(set(reference.exit_index.tolist())) > 1  # the threshold really splits the batch
    result = cascade(pieces, images, tau)
    assert result.exit_index.tolist() == reference.exit_index.tolist()
    assert result.classes.tolist() == reference.classes.tolist()
    torch.testing.assert_close(result.confidence, reference.confidence, rtol=1e-5, atol=1e-6)
    # with temperatures too: the rule judges logits / T on both paths
    temperatures = [1.5, 0.7, 1.2, 1.0]
    assert (
        cascade(pieces, images, tau, temperatures=temperatures).exit_index.tolist()
        == predict(model, images, tau, temperatures=temperatures).exit_index.tolist()
    )


def test_prefix_programs_give_each_classifiers_logits_at_any_batch_size(exported, images):
    model, folder, _ = exported
    prefixes = load_programs(folder, "prefix")
    with torch.no_grad():
        full = model(images).logits
    for classifier, prefix in enumerate(prefixes):
        torch.testing.assert_close(prefix(images), full[classifier], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(prefixes[0](images[:1]), full[0][:1], rtol=1e-4, atol=1e-5)  # batch 1


def test_manifest_names_every_program(exported):
    model, folder, files = exported
    manifest = json.loads((folder / MANIFEST).read_text())
    k = model.num_classifiers
    assert files[-1] == folder / MANIFEST and all(path.is_file() for path in files)
    assert manifest["classifiers"] == list(model.classifier_names())
    kinds = [(entry["kind"], entry["classifier"], entry["file"]) for entry in manifest["programs"]]
    names = model.classifier_names()
    assert kinds == [("segment", names[i], f"segment{i + 1}.pt2") for i in range(k)] + [
        ("prefix", names[i], f"prefix{i + 1}.pt2") for i in range(k)
    ]
    segments = manifest["programs"][:k]
    assert segments[0]["input"] == ["N", 3, 32, 32]
    for before, after in itertools.pairwise(segments):  # each segment takes what the previous one returns
        assert after["input"] == before["outputs"][0]
    assert all(entry["outputs"][-1] == ["N", NUM_CLASSES] for entry in manifest["programs"])
