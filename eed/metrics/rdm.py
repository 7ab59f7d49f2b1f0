"""Representational dissimilarity matrices (RDMs), the paper's Fig. 4.

For N seeded random samples of a split, sorted by class, the RDM of a layer holds the
correlation distance 1 - Pearson r between every two samples' activations. The paper
uses the main network's activations before the fully connected layer (F_k, the pooled
features) and after it (Z_k, the logits); any exit's F_i/Z_i can be added. A network
with class-specific representations shows dark blocks on the diagonal (small distances
within a class) on a bright background (large distances between classes).

So that runs compare by number, not only by eye, each RDM is summarised by the mean
dissimilarity of same-class pairs (``within``), of different-class pairs (``between``)
and ``ratio = between / within`` (higher = more class-specific; 1 = no class structure).

The sample (and the zoomed class subset) depend only on ``seed`` and the split's labels,
never on the model, so every run is measured on the same images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from eed.errors import ConfigError
from eed.metrics import round_floats

# --------------------------------------------------------------------------- choosing samples


def select_samples(labels: Tensor, count: int, seed: int) -> Tensor:
    """Indices of ``count`` seeded random samples, sorted by class (then by index)."""
    if count > len(labels):
        raise ConfigError(f"eval.rdm_samples: asked for {count} samples, the split has {len(labels)}")
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(labels), generator=generator)[:count].sort().values
    return chosen[torch.sort(labels[chosen], stable=True).indices]


def select_classes(labels: Tensor, count: int, seed: int) -> list[int]:
    """``count`` seeded random classes among those present in ``labels``, ascending."""
    present = labels.unique()
    generator = torch.Generator().manual_seed(seed)
    picked = present[torch.randperm(len(present), generator=generator)[: min(count, len(present))]]
    return sorted(picked.tolist())


# --------------------------------------------------------------------------- the matrices


def correlation_distance(activations: Tensor) -> Tensor:
    """(N, ...) activations -> (N, N) float64 matrix of 1 - Pearson r between rows.

    Symmetric with an exact zero diagonal. A constant row (no variance, r undefined) is
    treated as uncorrelated with everything: distance 1.
    """
    x = activations.double().flatten(start_dim=1)
    x = x - x.mean(dim=1, keepdim=True)
    x = x / x.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    distance = 1.0 - (x @ x.T).clamp(-1.0, 1.0)
    distance = (distance + distance.T) / 2  # exact symmetry despite rounding in the product
    distance.fill_diagonal_(0.0)
    return distance


@dataclass
class RdmSummary:
    within: float | None  # mean over same-class pairs (i != j); None if every class has one sample
    between: float | None  # mean over different-class pairs; None if there is one class
    ratio: float | None  # between / within

    def to_dict(self) -> dict[str, float | None]:
        return {"within": self.within, "between": self.between, "ratio": self.ratio}


def summarize_rdm(rdm: Tensor, labels: Tensor) -> RdmSummary:
    same_class = labels[:, None] == labels[None, :]
    off_diagonal = ~torch.eye(len(labels), dtype=torch.bool)
    within_pairs, between_pairs = rdm[same_class & off_diagonal], rdm[~same_class]
    within = float(within_pairs.mean()) if within_pairs.numel() else None
    between = float(between_pairs.mean()) if between_pairs.numel() else None
    ratio = between / within if within and between is not None else None
    return RdmSummary(within, between, ratio)


@dataclass
class RdmResult:
    sample_indices: Tensor  # positions in the split, sorted by class
    labels: Tensor  # their labels
    rdms: dict[str, Tensor]  # layer name ("F_main", "Z_main", ...) -> (N, N)
    subset_classes: list[int]  # the zoomed classes
    subset_positions: Tensor  # rows of the sample that belong to them
    subset_rdms: dict[str, Tensor]
    summaries: dict[str, RdmSummary]
    subset_summaries: dict[str, RdmSummary]

    @property
    def subset_labels(self) -> Tensor:
        return self.labels[self.subset_positions]

    def metrics(self) -> dict[str, Any]:
        """``rdm.json``: per layer within/between/ratio, for all samples and for the subset."""
        out: dict[str, Any] = {layer: s.to_dict() for layer, s in self.summaries.items()}
        out["subset"] = {layer: s.to_dict() for layer, s in self.subset_summaries.items()}
        out["num_samples"] = len(self.labels)
        out["subset_classes"] = self.subset_classes
        return round_floats(out)


def compute_rdms(
    activations: dict[str, Tensor], labels: Tensor, sample_indices: Tensor, subset_class_count: int, seed: int
) -> RdmResult:
    """RDMs and summaries of each layer's activations (rows = samples sorted by class)."""
    subset_classes = select_classes(labels, subset_class_count, seed)
    subset_positions = torch.isin(labels, torch.tensor(subset_classes)).nonzero().flatten()
    rdms = {layer: correlation_distance(values) for layer, values in activations.items()}
    subset_rdms = {layer: rdm[subset_positions][:, subset_positions] for layer, rdm in rdms.items()}
    subset_labels = labels[subset_positions]
    return RdmResult(
        sample_indices=sample_indices,
        labels=labels,
        rdms=rdms,
        subset_classes=subset_classes,
        subset_positions=subset_positions,
        subset_rdms=subset_rdms,
        summaries={layer: summarize_rdm(rdm, labels) for layer, rdm in rdms.items()},
        subset_summaries={layer: summarize_rdm(rdm, subset_labels) for layer, rdm in subset_rdms.items()},
    )


def layer_activations(
    collected: Any, names: Sequence[str], indices: Tensor, classifiers: Sequence[str] = ("main",)
) -> dict[str, Tensor]:
    """``{"F_<name>": features, "Z_<name>": logits}`` of the chosen samples for each listed
    classifier, from a :class:`~eed.engine.loops.Collected` gathered ``with_features=True``."""
    if collected.features is None:
        raise ValueError("collect the outputs with with_features=True to compute RDMs")
    activations = {}
    for name in classifiers:
        if name not in names:
            raise ConfigError(f"unknown classifier {name!r}; this network has {', '.join(names)}")
        i = list(names).index(name)
        activations[f"F_{name}"] = collected.features[i][indices]
        activations[f"Z_{name}"] = collected.logits[i][indices]
    return activations
