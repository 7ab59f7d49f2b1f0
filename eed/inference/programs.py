"""The network as ``torch.export`` programs: early exit without Python control flow.

:func:`export_programs` writes, for a network with k classifiers,

- ``segment{i}.pt2`` (i = 1..k): the cascade's pieces (:class:`eed.inference.early_exit.Segment`):
  segment 1 maps images to (hidden state, exit-1 logits), segment i the previous hidden state
  to (its hidden state, classifier i's logits). A runtime cascades them: run segment 1, keep the
  samples whose exit-rule score is below the threshold, run segment 2 on them, and so on.
- ``prefix{i}.pt2``: images to classifier i's logits (the stem, the stages up to its stage and
  the classifier), for a deployment that always answers at one exit.
- ``programs.json``: what each program takes and returns, the classifier names and the rule.

Every program has a dynamic batch dimension. :func:`load_programs` loads the segments back as
callables that :func:`eed.inference.early_exit.cascade` runs: a test checks that this equals
:func:`eed.inference.early_exit.predict`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from eed.inference.early_exit import SegmentFn, segments
from eed.models.multi_exit import MultiExitNet

MANIFEST = "programs.json"
# Largest batch the programs accept (torch.export needs a bound for the dynamic dimension).
MAX_BATCH = 4096
RULE = (
    "exit at the first classifier whose score under the served model's exit_rule (confidence: the max softmax "
    "probability; entropy: 1 - H(p)/log(C); margin: top-1 minus top-2 probability; patience: the classifiers "
    "in a row, this one included, that agree on the class, over their number; probabilities of "
    "logits / temperature when calibrated) is >= the threshold; the main output answers for every sample "
    "still left"
)


class Prefix(nn.Module):
    """Images to classifier ``classifier``'s logits: the segments up to it, one after another."""

    def __init__(self, model: MultiExitNet, classifier: int):
        super().__init__()
        self.pieces = nn.ModuleList(segments(model)[: classifier + 1])

    def forward(self, images: Tensor) -> Tensor:
        hidden, logits = images, None
        for piece in self.pieces:
            hidden, logits = piece(hidden)
        if logits is None:  # (a Python check, made once when the prefix is traced)
            raise ValueError("a prefix needs at least one segment")
        return logits


def export_programs(model: MultiExitNet, image_size: int, folder: str | Path) -> list[Path]:
    """Export ``model`` (on CPU, in eval mode) as segment and prefix programs into ``folder``;
    returns the files written, the manifest last."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    names = model.classifier_names()
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    files, entries = [], []
    try:
        hidden = torch.zeros(2, 3, image_size, image_size, device=next(model.parameters()).device)
        for classifier, piece in enumerate(segments(model)):
            shape = list(hidden.shape[1:])
            program = torch.export.export(piece, (hidden,), dynamic_shapes=({0: batch},))
            path = folder / f"segment{classifier + 1}.pt2"
            torch.export.save(program, path)
            with torch.no_grad():  # not inference_mode: the next export cannot trace its output
                hidden, _ = piece(hidden)
            entries.append(
                {
                    "file": path.name,
                    "kind": "segment",
                    "classifier": names[classifier],
                    "input": ["N", *shape],
                    "outputs": [["N", *hidden.shape[1:]], ["N", model.num_classes]],
                }
            )
            files.append(path)
        images = torch.zeros(2, 3, image_size, image_size, device=hidden.device)
        for classifier in range(model.num_classifiers):
            program = torch.export.export(Prefix(model, classifier), (images,), dynamic_shapes=({0: batch},))
            path = folder / f"prefix{classifier + 1}.pt2"
            torch.export.save(program, path)
            entries.append(
                {
                    "file": path.name,
                    "kind": "prefix",
                    "classifier": names[classifier],
                    "input": ["N", 3, image_size, image_size],
                    "outputs": [["N", model.num_classes]],
                }
            )
            files.append(path)
    finally:
        model.train(was_training)
    manifest = folder / MANIFEST
    manifest.write_text(
        json.dumps(
            {
                "classifiers": names,
                "max_batch": MAX_BATCH,
                "rule": RULE,
                "input": "float32 images normalized with the model's normalization, N x 3 x H x W",
                "programs": entries,
            },
            indent=2,
        )
        + "\n"
    )
    return [*files, manifest]


def load_programs(folder: str | Path, kind: str = "segment") -> list[SegmentFn]:
    """The ``kind`` programs (``segment`` or ``prefix``) of ``folder``, classifier order, as callables."""
    folder = Path(folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    return [
        torch.export.load(folder / entry["file"]).module() for entry in manifest["programs"] if entry["kind"] == kind
    ]
