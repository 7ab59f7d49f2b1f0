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

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from eed.evaluation import round_floats

# --------------------------------------------------------------------------- choosing samples


def select_samples(labels: Tensor, count: int, seed: int) -> Tensor:
    """Indices of ``count`` seeded random samples, sorted by class (then by index)."""
    if count > len(labels):
        raise ValueError(f"asked for {count} samples, the split has {len(labels)}")
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
    within: float | None   # mean over same-class pairs (i != j); None if every class has one sample
    between: float | None  # mean over different-class pairs; None if there is one class
    ratio: float | None    # between / within

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
    sample_indices: Tensor           # positions in the split, sorted by class
    labels: Tensor                   # their labels
    rdms: dict[str, Tensor]          # layer name ("F_main", "Z_main", ...) -> (N, N)
    subset_classes: list[int]        # the zoomed classes
    subset_positions: Tensor         # rows of the sample that belong to them
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


def compute_rdms(activations: dict[str, Tensor], labels: Tensor, sample_indices: Tensor,
                 subset_class_count: int, seed: int) -> RdmResult:
    """RDMs and summaries of each layer's activations (rows = samples sorted by class)."""
    subset_classes = select_classes(labels, subset_class_count, seed)
    subset_positions = torch.isin(labels, torch.tensor(subset_classes)).nonzero().flatten()
    rdms = {layer: correlation_distance(values) for layer, values in activations.items()}
    subset_rdms = {layer: rdm[subset_positions][:, subset_positions] for layer, rdm in rdms.items()}
    subset_labels = labels[subset_positions]
    return RdmResult(
        sample_indices=sample_indices, labels=labels, rdms=rdms, subset_classes=subset_classes,
        subset_positions=subset_positions, subset_rdms=subset_rdms,
        summaries={layer: summarize_rdm(rdm, labels) for layer, rdm in rdms.items()},
        subset_summaries={layer: summarize_rdm(rdm, subset_labels) for layer, rdm in subset_rdms.items()},
    )


def layer_activations(collected: Any, names: Sequence[str], indices: Tensor,
                      classifiers: Sequence[str] = ("main",)) -> dict[str, Tensor]:
    """``{"F_<name>": features, "Z_<name>": logits}`` of the chosen samples for each listed
    classifier, from a :class:`~eed.evaluation.Collected` gathered ``with_features=True``."""
    if collected.features is None:
        raise ValueError("collect the outputs with with_features=True to compute RDMs")
    activations = {}
    for name in classifiers:
        if name not in names:
            raise ValueError(f"unknown classifier {name!r}; this network has {', '.join(names)}")
        i = list(names).index(name)
        activations[f"F_{name}"] = collected.features[i][indices]
        activations[f"Z_{name}"] = collected.logits[i][indices]
    return activations


# --------------------------------------------------------------------------- the whole command


@dataclass
class RdmRun:
    result: RdmResult
    files: list[Path]
    mlflow_run_id: str | None = None


def write_rdm_outputs(result: RdmResult, out_dir: str | Path) -> list[Path]:
    """``rdm.json`` (summaries) and ``figures/rdm.png`` into ``out_dir``."""
    from eed.plots import plot_rdms

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = out_dir / "rdm.json"
    metrics_path.write_text(json.dumps(result.metrics(), indent=2) + "\n")
    return [metrics_path, plot_rdms(result, out_dir / "figures" / "rdm.png")]


def read_samples(config: Any, split: str, count: int, seed: int) -> tuple[Any, Tensor]:
    """The seeded sample of a prepared split, read straight from its ``.beton`` file: only
    the labels of the whole split, then only the chosen images (as uint8, with the
    normalization the loaders apply). Returns the :class:`~eed.data.memory.SplitTensors`
    and the chosen indices."""
    from eed.data.manifest import load_manifest
    from eed.data.memory import read_labels, read_split

    labels = torch.from_numpy(read_labels(load_manifest(config).split_path(split)))
    indices = select_samples(labels, min(count, len(labels)), seed)
    samples = read_split(config, split, indices=indices.numpy())
    return samples, indices


def run_rdm(source: str, config: Any, out_dir: str | Path, *, split: str = "test",
            classifiers: Sequence[str] = ("main",), seed: int = 0, log: bool = True,
            which: str = "best", batch_size: int = 250) -> RdmRun:
    """``eed rdm``: RDMs of a checkpoint (file or MLflow run id) on ``config.eval.rdm_samples``
    samples of ``split``, zoomed on ``config.eval.rdm_classes`` classes.

    Only the sampled images are read and run through the network, in float32 (no autocast:
    correlations of a few hundred samples are cheap, and should not carry bf16 rounding).
    """
    from eed.checkpoint import model_from_checkpoint
    from eed.data.augment import Normalizer
    from eed.data.manifest import load_manifest
    from eed.evaluation import check_classes, collect_outputs, log_child_run, resolve_source
    from eed.tracking import check_tracking_uri, resolve_tracking_uri
    from eed.train import setup_runtime

    tracking_uri = resolve_tracking_uri(config) if (log or not Path(source).is_file()) else None
    if log:
        check_tracking_uri(tracking_uri)
    resolved = resolve_source(source, tracking_uri, which)
    manifest = load_manifest(config)
    check_classes(resolved.checkpoint, manifest.class_names, config.data.dataset)
    model = model_from_checkpoint(resolved.checkpoint, arch=config.model.arch, num_classes=manifest.num_classes)
    device = setup_runtime(config.train).device
    model = model.to(device)

    samples, indices = read_samples(config, split, config.eval.rdm_samples, seed)
    normalize = Normalizer(samples.normalization, device=device)
    batches = ((normalize(samples.images[start:start + batch_size].to(device)),
                samples.labels[start:start + batch_size]) for start in range(0, len(indices), batch_size))
    collected = collect_outputs(model, batches, device, with_features=True)
    activations = layer_activations(collected, model.classifier_names(), torch.arange(len(indices)), classifiers)
    result = compute_rdms(activations, collected.labels, indices, config.eval.rdm_classes, seed)
    files = write_rdm_outputs(result, out_dir)
    run_id = None
    if log:
        run_id = log_child_run(files, Path(out_dir), {"rdm": result.metrics()}, stage="rdm",
                               tracking_uri=tracking_uri, parent_run_id=resolved.run_id,
                               experiment=config.tracking.experiment, split=split, source=resolved.description)
    return RdmRun(result, files, run_id)
