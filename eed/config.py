"""Typed configuration: one class per section of ``params.yaml``.

Loading validates everything: an unknown or misspelled key, a wrong type or an
out-of-range value raises :class:`ConfigError` naming the key and what is allowed.
Keys left ``null`` in ``params.yaml`` are filled from the ``scale`` preset
(``cpu`` for runs on a laptop-class CPU, ``paper`` for the paper's setting), so the
paper-scale run is one switch away: ``dvc exp run -S scale=paper``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from eed.errors import ConfigError
from eed.methods import get_method, method_names
from eed.paths import project_root

Scale = Literal["cpu", "paper"]
# default: eed's own choices; official: the paper's official release (hjdw2/Exit-Ensemble-
# Distillation) where it differs, see OFFICIAL_RELEASE.
Reference = Literal["default", "official"]
# Which score lets a sample leave early (eed/metrics/anytime.py defines each).
ExitRule = Literal["confidence", "entropy", "margin", "patience"]

DATA_ROOT_ENV = "EED_DATA_ROOT"


class _Section(BaseModel):
    # extra="forbid" turns a misspelled key into an error instead of a silent new value.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class SyntheticConfig(_Section):
    """Seeded random images, for tests and benchmarks only."""

    num_train: int = Field(default=2000, ge=1)
    num_test: int = Field(default=500, ge=1)
    num_classes: int = Field(default=10, ge=2)
    image_size: int = Field(default=32, ge=8)


class DataConfig(_Section):
    dataset: Literal["cifar10", "cifar100", "imagenet", "synthetic"] = "cifar100"
    # Where the raw dataset lives (or is downloaded to). $EED_DATA_ROOT wins over this.
    root: str = "data/raw"
    # Where `eed prepare` writes the .beton files and their manifest.
    prepared_dir: str = "data/prepared"
    backend: Literal["ffcv", "tensor"] = "ffcv"
    # Images carved from the training set (stratified, seeded) for model selection; 0 = none
    # (the paper's protocol: train on all of it); null = preset (cpu 5000, paper 0).
    val_size: int | None = Field(default=None, ge=0)
    # Seed of the validation split and of the training subset, kept apart from `seed` so that
    # runs with different seeds train and select on the same images.
    split_seed: int = Field(default=0, ge=0)
    # Training images used per run (stratified subset of the train split); 0 = all; null = preset.
    train_subset: int | None = Field(default=None, ge=0)
    # FFCV loader threads (ImageNet: also the writer processes of `prepare`); null = auto, see workers().
    num_workers: int | None = Field(default=None, ge=0)
    # ImageNet only: JPEG settings of the .beton files.
    max_resolution: int = Field(default=256, ge=32)
    jpeg_quality: int = Field(default=90, ge=1, le=100)
    # How train/evaluate check the prepared files against their manifest before reading them:
    # sha256 (size and hash, each file hashed once per process) or size (for huge ImageNet files).
    verify: Literal["sha256", "size"] = "sha256"
    synthetic: SyntheticConfig = SyntheticConfig()

    def workers(self, *, compute_on_cpu: bool) -> int:
        """``num_workers``, or when null: 1 when the model runs on the CPU, where torch's threads
        take every core and a second loader thread only contends with them (BENCHMARKS.md,
        finding 3); otherwise every core this process may use, shared among its machine's ranks."""
        if self.num_workers is not None:
            return max(1, self.num_workers)
        if compute_on_cpu:
            return 1
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))

    def resolved_root(self) -> Path:
        """$EED_DATA_ROOT, else ``root``; a relative root is taken from the project root, so
        DVC experiments running in a temporary copy still find the raw data."""
        root = Path(os.environ.get(DATA_ROOT_ENV) or self.root).expanduser()
        if root.is_absolute():
            return root
        return project_root() / root


class ModelConfig(_Section):
    # A registered backbone (`eed models`), checked against the registry where the config meets the
    # models (eed.models.from_config), not here: reading params.yaml imports no network code.
    arch: str = "resnet18"
    # Channels of the first stage; later stages scale with it. null = preset
    # (cpu: a quarter of the architecture's own width, 16 for ResNet-18; paper: its own, 64),
    # filled in by eed.models.from_config.resolve_architecture.
    width: int | None = Field(default=None, ge=1)

    # Weight initialisation (eed/models/initialization.py): he_fan_out = He-normal fan-out convs,
    # BN weight 1 / bias 0 (the official release, torchvision, timm); pytorch = each layer's
    # own default (what eed did before it initialised weights).
    init: Literal["he_fan_out", "pytorch"] = "he_fan_out"
    # ReLU in the stem: null = the architecture's own stem (conv-BN-ReLU for the CIFAR ResNets and
    # VGG), except under reference: official, whose CIFAR ResNet has no ReLU after the stem's BN;
    # false = the stem without its ReLU.
    stem_relu: bool | None = None


TeacherMember = int | Literal["main"]


class LossConfig(_Section):
    # Output distillation loss l_z: KL on softened probabilities (scaled by T^2) or MSE on logits.
    output: Literal["kl", "mse"] = "mse"
    # Weight of l_z. null = 1 (the paper's text), except with reference: official and output kl:
    # 0.1, the official release's weight of its KL loss (its MSE loss has weight 1).
    alpha: float | None = Field(default=None, ge=0)
    # Feature distillation weight; ignored by baseline/branchynet/distill.
    beta: float = Field(default=1.0, ge=0)
    temperature: float = Field(default=3.0, gt=0)
    # EED teacher ensemble: classifier indices 1..k-1 and/or "main"; null = all classifiers.
    # Checked against the network's k (range, the same classifier twice) by the objective.
    teacher: list[TeacherMember] | None = None

    @field_validator("teacher")
    @classmethod
    def _teacher_members(cls, teacher: list[TeacherMember] | None) -> list[TeacherMember] | None:
        if teacher is None:
            return None
        if not teacher:
            raise ValueError("teacher must name at least one classifier (1..k-1 or 'main'), or be null for all")
        for member in teacher:
            if isinstance(member, int) and member < 1:
                raise ValueError(f"teacher index {member} out of range; exits are numbered from 1, or use 'main'")
        return teacher


def check_method_loss(method: str, loss: LossConfig) -> None:
    """Loss settings a method cannot train with (the config and the objective both ask)."""
    spec = get_method(method)
    if spec.feature_loss == "required" and loss.beta <= 0:
        raise ConfigError(
            f"loss.beta: method {method!r} adds the feature loss and needs beta > 0; use method 'distill' for beta = 0"
        )
    if loss.teacher is not None and spec.teacher != "chosen":
        chooser = [m for m in method_names() if get_method(m).teacher == "chosen"]
        has = "uses the main output" if spec.teacher == "main" else "has no teacher"
        raise ConfigError(
            f"loss.teacher: only method {' or '.join(repr(m) for m in chooser)} takes a teacher "
            f"ensemble ({method!r} {has}); set loss.teacher to null (got {loss.teacher!r})"
        )


class TrainConfig(_Section):
    epochs: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=128, ge=1)
    lr: float = Field(default=0.1, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=5e-4, ge=0)
    nesterov: bool = False
    # step: x gamma at milestones (the paper); cosine; onecycle (short CPU runs). null = preset.
    schedule: Literal["step", "cosine", "onecycle"] | None = None
    milestones: list[int] = [75, 130, 180]
    gamma: float = Field(default=0.1, gt=0, le=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # auto = bf16 autocast on CUDA, fp32 on CPU.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # auto = channels_last on CUDA only.
    channels_last: Literal["auto", "on", "off"] = "auto"
    compile: bool = False
    deterministic: bool = False
    checkpoint_every: int = Field(default=1, ge=1)
    # Processes for DistributedDataParallel (launched through torchrun when > 1).
    nproc: int = Field(default=1, ge=1)
    # Machines taking part, nproc processes each: train.batch_size is shared by all
    # nnodes x nproc ranks, so it changes how the batch is split (a training key, like nproc).
    nnodes: int = Field(default=1, ge=1)
    # This machine's index, 0..nnodes-1; machine 0 runs the global rank 0, which alone logs to
    # MLflow and writes checkpoints and outputs. Differs per machine: pass it on the command line
    # (`eed train --set train.node_rank=1`, `dvc exp run -S train.node_rank=1`).
    node_rank: int = Field(default=0, ge=0)
    # "host:port" where the machines meet (machine 0's address and a free port, e.g.
    # host0:29400); required when nnodes > 1, passed like node_rank.
    rdzv_endpoint: str | None = None
    # How the machines meet: static keeps node_rank, so machine 0 runs rank 0 (and DVC's outputs
    # are where `dvc exp run` ran); c10d is torchrun's elastic rendezvous, which ignores node_rank
    # and numbers the machines itself, so rank 0 and the outputs may land on any machine.
    rdzv_backend: Literal["static", "c10d"] = "static"

    @field_validator("channels_last", mode="before")
    @classmethod
    def _yaml_booleans(cls, value: Any) -> Any:
        # YAML reads on/off as booleans.
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value

    @field_validator("milestones")
    @classmethod
    def _increasing(cls, milestones: list[int]) -> list[int]:
        if any(m < 1 for m in milestones) or milestones != sorted(set(milestones)):
            raise ValueError(f"milestones must be strictly increasing positive epochs, got {milestones}")
        return milestones

    @field_validator("rdzv_endpoint")
    @classmethod
    def _host_and_port(cls, endpoint: str | None) -> str | None:
        # Checked here, not by torchrun minutes later on another machine.
        import re

        if endpoint is None:
            return None
        # A host name or address (IPv6 in brackets), a colon, a port.
        match = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9_.-]*):(?P<port>[0-9]{1,5})", endpoint.strip())
        if not match or not 1 <= int(match["port"]) <= 65535:
            raise ValueError(
                "must look like host:port, machine 0's address and a free port (e.g. host0:29400 or 10.0.0.5:29400)"
            )
        return endpoint.strip()

    @model_validator(mode="after")
    def _nodes(self) -> TrainConfig:
        if self.node_rank >= self.nnodes:
            raise ValueError(
                f"train.node_rank={self.node_rank} must be below train.nnodes={self.nnodes} "
                f"(machines are numbered 0..{self.nnodes - 1})"
            )
        if self.nnodes > 1 and self.rdzv_endpoint is None:
            raise ValueError(
                f"train.rdzv_endpoint is required with train.nnodes={self.nnodes}: host:port "
                "where the machines meet, machine 0's address and a free port "
                "(e.g. --set train.rdzv_endpoint=host0:29400)"
            )
        return self


class EvalConfig(_Section):
    split: Literal["test", "val"] = "test"
    ece_bins: int = Field(default=15, ge=1)
    # Early-exit sweep: thresholds tau from 0 to 1 in this many steps.
    thresholds: int = Field(default=101, ge=2)
    # The exit rule of the budgets, the guaranteed threshold and the served model (every rule's
    # curve is drawn and reported beside it).
    exit_rule: ExitRule = "confidence"
    # Early-exit budgets (GFLOPs per sample) whose thresholds are fitted on the validation split.
    budgets: list[float] = []
    # Temperature scaling per classifier, fitted on val (always reported); true: the early-exit
    # sweep and thresholds use the calibrated confidences.
    calibrate: bool = False
    # A threshold with a guarantee: top-1 lost vs the main output at most max_drop (a fraction),
    # with probability >= 1 - delta over the validation draw; null: none fitted.
    max_drop: float | None = Field(default=0.01, ge=0.0, le=1.0)
    delta: float = Field(default=0.1, gt=0.0, lt=1.0)
    rdm_samples: int = Field(default=500, ge=2)
    rdm_classes: int = Field(default=10, ge=2)


class TrackingConfig(_Section):
    enabled: bool = True
    # null = the default store at the project root (see eed/tracking/store.py: a sqlite database and an
    # artifact folder).
    # $MLFLOW_TRACKING_URI wins over this.
    uri: str | None = None
    experiment: str = "eed"


class PathsConfig(_Section):
    # Everything a pipeline stage writes goes below this folder, one subfolder per stage.
    out_dir: str = "outputs"


# numpy's and Python's generators take seeds in [0, 2**32); each DDP rank seeds with seed + rank (wrapped).
MAX_SEED = 2**32 - 1


class Config(_Section):
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    # A row of the methods table (eed/methods.py): baseline, branchynet, distill, byot, eed.
    method: str = "eed"
    scale: Scale = "cpu"
    reference: Reference = "default"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    tracking: TrackingConfig = TrackingConfig()
    paths: PathsConfig = PathsConfig()

    @field_validator("method")
    @classmethod
    def _known_method(cls, method: str) -> str:
        get_method(method)  # a ValueError listing the methods
        return method

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        check_method_loss(self.method, self.loss)
        return self

    def resolved(self) -> Config:
        """A copy with every preset-controlled ``null`` filled from :data:`PRESETS`, except
        ``model.width``, which depends on the architecture
        (:func:`eed.models.from_config.resolve_architecture`)."""
        data = self.model_dump()
        for dotted, value in PRESETS[self.scale].items():
            section, key = dotted.split(".")
            if data[section][key] is None:
                data[section][key] = value
        # The reference decides what the model and the loss are where the user left it open.
        official = self.reference == "official"
        if data["model"]["stem_relu"] is None:
            data["model"]["stem_relu"] = not official
        if data["loss"]["alpha"] is None:
            data["loss"]["alpha"] = OFFICIAL_KL_ALPHA if official and self.loss.output == "kl" else PAPER_ALPHA
        return Config.model_validate(data)


# The keys params.yaml may leave null for the preset or the reference to fill.
PRESET_KEYS = (
    "train.epochs",
    "train.schedule",
    "data.train_subset",
    "data.val_size",
    "model.width",
    "model.stem_relu",
    "loss.alpha",
)

_T = TypeVar("_T")


def require_resolved(value: _T | None, key: str) -> _T:
    """``value``, a preset key's (:data:`PRESET_KEYS`) in a resolved config. Null means the config
    was used without :meth:`Config.resolved` (or, for ``model.width``, without
    :func:`eed.models.from_config.resolve_architecture`): a caller's bug, named here rather than
    failing later as arithmetic on None."""
    if value is None:
        raise ValueError(
            f"{key} is null: this needs a resolved config (load_config, Config.resolved(), and for "
            "model.width eed.models.from_config.resolve_architecture)"
        )
    return value


def preset_values(config: Config) -> dict[str, dict[str, Any]]:
    """The values a (resolved) config gives the keys of :data:`PRESET_KEYS`, as nested
    sections (``{"train": {"epochs": 4, ...}, ...}``): what a run used where params.yaml says
    null, for the resolve stage to show DVC."""
    values: dict[str, dict[str, Any]] = {}
    for dotted in PRESET_KEYS:
        section, key = dotted.split(".")
        values.setdefault(section, {})[key] = getattr(getattr(config, section), key)
    return values


# Values used where params.yaml leaves the key null. `paper` is the paper's protocol
# (the official release's 200-epoch step schedule at the architecture's own width).
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {"train.epochs": 4, "train.schedule": "onecycle", "data.train_subset": 20000, "data.val_size": 5000},
    # All 50,000 training images, no validation split: the paper reports test accuracy.
    "paper": {"train.epochs": 200, "train.schedule": "step", "data.train_subset": 0, "data.val_size": 0},
}

# loss.alpha when left null: the weight the paper's text gives l_z.
PAPER_ALPHA = 1.0
# What `reference: official` changes where the key is left null: the official release's CIFAR
# ResNet stem has no ReLU after its BN, and it weighs its KL output loss by 0.1 (its MSE by 1).
# Its He-normal fan-out initialisation is eed's default (model.init) either way.
OFFICIAL_KL_ALPHA = 0.1


def _format_validation_error(error: ValidationError, source: str, overridden: frozenset[str] = frozenset()) -> str:
    """One line per problem, naming where the value came from: ``--set <key>`` for an override
    (of the key or a section holding it), else ``source`` (the params file, or ``defaults``)."""
    lines = []
    for problem in error.errors():
        key = ".".join(str(part) for part in problem["loc"] if not str(part).startswith("function-after"))
        parts = key.split(".")
        given = next((".".join(parts[:n]) for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in overridden), None)
        source_of = f"--set {given}" if given else source
        # Literal errors carry the allowed values in the message; extra keys name the section.
        if problem["type"] == "extra_forbidden":
            lines.append(f"{source_of}: unknown key '{key}'; allowed keys here: {_allowed_keys(problem['loc'])}")
        else:
            message = problem["msg"].removeprefix("Value error, ")
            named = source_of if given == key else f"{source_of}: {key or '<root>'}"
            lines.append(f"{named}: {message} (got {problem.get('input')!r})")
    return "\n".join(lines)


def _allowed_keys(loc: tuple) -> str:
    section: type[BaseModel] = Config
    for part in loc[:-1]:
        annotation = section.model_fields[str(part)].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            section = annotation
    return ", ".join(section.model_fields)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``"train.lr=0.05"`` into the key path and the YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value, e.g. train.lr=0.05")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has no key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {text}: the value is not valid YAML ({str(error).splitlines()[0]})") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        section: type[BaseModel] = Config
        for depth, part in enumerate(path):
            if part not in section.model_fields:
                where = ".".join(path[:depth]) or "top level"
                raise ConfigError(
                    f"--set {text}: unknown key '{'.'.join(path[: depth + 1])}'; "
                    f"allowed keys at {where}: {', '.join(section.model_fields)}"
                )
            if depth == len(path) - 1:
                node[part] = value
                break
            annotation = section.model_fields[part].annotation
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                raise ConfigError(f"--set {text}: '{'.'.join(path[: depth + 1])}' is a value, not a section")
            section = annotation
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text}: '{'.'.join(path[: depth + 1])}' must be a mapping")
    return data


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last one:
    a second ``train:`` section would silently reset every other train key)."""

    # The document's root node, set by read_yaml before construction (for _path_to).
    root: yaml.Node | None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in first:
                raise ConfigError(
                    f"{self.name}: duplicate key {_dotted(self, key_node, key)!r} at line {line} "
                    f"(first at line {first[key]}); keep one"
                )
            first[key] = line
        return super().construct_mapping(node, deep)


def _dotted(loader: _UniqueKeyLoader, key_node: yaml.Node, key: Any) -> str:
    """``train.epochs`` for the key ``epochs`` of the top-level ``train`` section."""
    parents = [str(loader.construct_object(parent_key)) for parent_key, parent in _path_to(loader, key_node)]
    return ".".join([*parents, str(key)])


def _path_to(loader: _UniqueKeyLoader, target: yaml.Node) -> list[tuple[yaml.Node, yaml.Node]]:
    """The (key, mapping) pairs from the document's root down to the mapping holding ``target``."""

    def walk(node: yaml.Node, trail: list) -> list | None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value in node.value:
                if key_node is target:
                    return trail
                found = walk(value, [*trail, (key_node, value)])
                if found is not None:
                    return found
        return None

    if loader.root is None:
        return []
    return walk(loader.root, []) or []


def read_yaml(path: Path) -> Any:
    """A YAML file's contents; one-line ConfigErrors for text that is not UTF-8, invalid YAML and
    duplicate keys."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{raw[error.start]:02x} at offset {error.start}, line "
            f"{line}); save it as UTF-8"
        ) from None
    loader = _UniqueKeyLoader(text)
    loader.name = str(path)
    try:
        loader.root = loader.get_single_node()
        return loader.construct_document(loader.root) if loader.root is not None else None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    finally:
        loader.dispose()


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read ``params.yaml`` (or defaults when ``path`` is None), apply ``key=value`` overrides,
    validate, and fill preset values. Raises :class:`ConfigError` with every problem found.

    The architecture is checked, and ``model.width`` filled, where the config meets the models
    (:func:`eed.models.from_config.resolve_architecture`): this reads no network code."""
    source = str(path) if path is not None else "defaults"
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"params file not found: {path}")
        data = read_yaml(path) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: must be a mapping of sections, got {type(data).__name__}")
    data = apply_overrides(data, list(overrides))
    overridden = frozenset(".".join(parse_override(text)[0]) for text in overrides)
    try:
        return Config.model_validate(data).resolved()
    except ValidationError as error:
        raise ConfigError(_format_validation_error(error, source, overridden)) from None


def flatten(config: Config | dict[str, Any]) -> dict[str, str]:
    """``{"train.lr": "0.1", ...}``: the form MLflow params take (also of a ``model_dump()``)."""
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else key, item)
        else:
            flat[prefix] = "null" if value is None else str(value)

    walk("", config if isinstance(config, dict) else config.model_dump())
    return flat


# Keys (or whole sections) that cannot change the weights a training run ends with, nor the
# metrics it reports; every other key shapes the training trajectory.
NON_TRAINING_KEYS: dict[str, str] = {
    "data.root": "where the raw files are read from; the manifest checks what they hold",
    "data.prepared_dir": "where the .beton files are kept",
    "data.num_workers": "loader threads deliver the same batches",
    "data.verify": "how the prepared files are checked before use; the files that pass are read the same",
    "train.checkpoint_every": "how often last.pt is written",
    "train.node_rank": "which machine this is; all machines together run the same ranks",
    "train.rdzv_endpoint": "where the machines meet to form the process group",
    "train.rdzv_backend": "how the machines meet; the same ranks train either way",
    "eval": "read by the evaluate and rdm stages, after training",
    "tracking": "where the run is logged",
    "paths": "where the outputs are written",
}


def is_training_key(key: str) -> bool:
    """Whether a flattened key (``train.lr``) can change what training produces."""
    return not any(key == k or key.startswith(k + ".") for k in NON_TRAINING_KEYS)


def training_settings(config: Config | dict[str, Any]) -> dict[str, str]:
    """The flattened keys of ``config`` that shape the training trajectory."""
    return {key: value for key, value in flatten(config).items() if is_training_key(key)}


def to_yaml(config: Config) -> str:
    return yaml.safe_dump(config.model_dump(), sort_keys=False)
