"""Typed configuration: params.yaml maps onto the classes; bad keys and values name themselves."""

from pathlib import Path

import pytest
import yaml

from eed.config import PRESETS, Config, ConfigError, flatten
from eed.config import load_config as read_params
from eed.models.from_config import resolve_architecture


def load_config(*args, **kwargs) -> Config:
    """params.yaml as a network-building stage sees it: read, then resolved against the registry."""
    return resolve_architecture(read_params(*args, **kwargs))


ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params.yaml"


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_params_yaml_maps_one_to_one_onto_the_config():
    raw = yaml.safe_load(PARAMS.read_text())
    config = load_config(PARAMS)
    dumped = Config.model_validate(raw).model_dump()
    # Every key of the file exists in the typed config and nothing is missing from the file.
    assert set(raw) == set(dumped)
    for section, values in raw.items():
        if isinstance(values, dict):
            assert set(values) == set(dumped[section]), section
    assert config.method == "eed" and config.loss.output == "mse"
    assert config.loss.alpha == config.loss.beta == 1.0
    assert config.model.arch == "resnet18" and config.data.dataset == "cifar100"


def test_presets_fill_only_null_keys(tmp_path):
    cpu = load_config(PARAMS)
    assert cpu.model.width == 16  # a quarter of ResNet-18's 64
    assert cpu.train.epochs == PRESETS["cpu"]["train.epochs"]
    paper = load_config(PARAMS, ["scale=paper"])
    assert paper.train.epochs == 200 and paper.train.schedule == "step"
    assert paper.model.width == 64 and paper.data.train_subset == 0
    assert load_config(PARAMS, ["model.arch=wrn28_10"]).model.width == 40
    assert load_config(PARAMS, ["model.arch=imagenet_resnet18", "data.dataset=imagenet"]).model.width == 64
    assert paper.train.milestones == [75, 130, 180]
    explicit = load_config(PARAMS, ["scale=paper", "train.epochs=7"])
    assert explicit.train.epochs == 7


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("metohd=eed", ["metohd", "method"]),
        ("loss.outptu=kl", ["loss.outptu", "output"]),
        ("loss.output=l1", ["loss.output", "'kl'", "'mse'"]),
        ("method=eeed", ["method", "'eed'", "'baseline'"]),
        ("train.lr=-1", ["train.lr", "greater than 0"]),
        ("train.epochs=two", ["train.epochs", "integer"]),
        ("model.arch=resnet19", ["model.arch", "resnet18"]),
        ("loss.teacher=[0, main]", ["loss.teacher", "out of range"]),
        ("train.milestones=[130, 75]", ["train.milestones", "increasing"]),
        ("train.lr", ["key=value"]),
        ("train.lr.x=1", ["train.lr", "not a section"]),
    ],
)
def test_bad_overrides_name_the_key(override, fragments):
    with pytest.raises(ConfigError) as error:
        load_config(PARAMS, [override])
    for fragment in fragments:
        assert fragment in str(error.value)


def test_a_bad_override_is_blamed_on_the_override_not_the_file(tmp_path):
    path = write(tmp_path, {"train": {"epochs": 2}, "seed": -1})
    with pytest.raises(ConfigError) as error:
        load_config(path, ["train.lr=abc"])
    lines = str(error.value).splitlines()
    assert len(lines) == 2 and any(line.startswith(f"{path}: seed: ") for line in lines)
    assert any(line.startswith("--set train.lr: Input should be a valid number") for line in lines), lines
    with pytest.raises(ConfigError, match=r"^--set train: train.lr: Input should be a valid number"):
        load_config(None, ["train={lr: abc}"])


def test_unknown_key_in_file_is_an_error_listing_allowed_keys(tmp_path):
    path = write(tmp_path, {"train": {"epochs": 2, "lrr": 0.1}})
    with pytest.raises(ConfigError, match=r"unknown key 'train.lrr'.*lr"):
        load_config(path)


def test_reading_params_imports_no_network_code():
    """model.arch is checked, and model.width filled, where the config meets the models: reading
    params.yaml alone leaves both to eed.models.from_config (the prepare stage builds no network)."""
    import subprocess
    import sys

    code = (
        "import sys; from eed.config import load_config; c = load_config(sys.argv[1], ['model.arch=resnet19']); "
        "print(c.model.width, any(m.startswith('eed.models') for m in sys.modules))"
    )
    completed = subprocess.run([sys.executable, "-c", code, str(PARAMS)], capture_output=True, text=True, check=True)
    assert completed.stdout.split() == ["None", "False"]
    with pytest.raises(ConfigError, match="model.arch: unknown architecture 'resnet19'"):
        resolve_architecture(read_params(PARAMS, ["model.arch=resnet19"]))


def test_architecture_must_fit_the_dataset():
    with pytest.raises(ConfigError, match="model.arch.*ImageNet network"):
        load_config(PARAMS, ["model.arch=imagenet_resnet50"])
    with pytest.raises(ConfigError, match="model.arch.*CIFAR network"):
        load_config(PARAMS, ["data.dataset=imagenet"])


def test_byot_needs_a_feature_weight():
    with pytest.raises(ConfigError, match="loss.beta"):
        load_config(PARAMS, ["method=byot", "loss.beta=0"])


def test_missing_or_malformed_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listed)


def test_teacher_accepts_indices_and_main():
    config = load_config(PARAMS, ["loss.teacher=[1, 3, main]"])
    assert config.loss.teacher == [1, 3, "main"]


def test_flatten_gives_dotted_mlflow_params():
    flat = flatten(load_config(PARAMS))
    assert flat["train.lr"] == "0.1" and flat["loss.alpha"] == "1.0" and flat["method"] == "eed"
    assert flat["data.synthetic.num_classes"] == "10"


def test_data_root_env_wins_and_relative_roots_follow_the_project(monkeypatch, tmp_path):
    config = load_config(PARAMS)
    monkeypatch.setenv("EED_DATA_ROOT", str(tmp_path))
    assert config.data.resolved_root() == tmp_path
    monkeypatch.delenv("EED_DATA_ROOT")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # what `dvc exp run` sets in its temp copy
    assert config.data.resolved_root() == tmp_path / "data" / "raw"


def test_loader_workers_default_to_one_beside_cpu_training_and_to_the_cores_otherwise(monkeypatch):
    data = load_config(PARAMS).data
    assert data.num_workers is None  # params.yaml leaves it to the rule below
    assert data.workers(compute_on_cpu=True) == 1
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert data.workers(compute_on_cpu=False) == 16
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun: 4 ranks share the machine's cores
    assert data.workers(compute_on_cpu=False) == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")
    assert data.workers(compute_on_cpu=False) == 1
    for explicit, used in ((3, 3), (0, 1)):  # an explicit count wins; 0 still runs one loader thread
        chosen = load_config(PARAMS, [f"data.num_workers={explicit}"]).data
        assert chosen.workers(compute_on_cpu=True) == chosen.workers(compute_on_cpu=False) == used
