"""The served early-exit model: ServedModel in process, the logged pyfunc model, the real server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from eed.data.augment import Normalizer
from eed.data.catalog import CIFAR10_NORMALIZATION
from eed.engine.checkpoint import Checkpoint, NetworkSpec, TrainState
from eed.inference.early_exit import predict
from eed.inference.served import LOAD_DEFAULTS, ServedModel, load_served
from eed.metrics.anytime import ABOVE_ONE
from eed.models.registry import create_model

CLASS_NAMES = [f"class{i}" for i in range(10)]
NORMALIZATION = {"mean": list(CIFAR10_NORMALIZATION.mean), "std": list(CIFAR10_NORMALIZATION.std)}
THRESHOLDS = {"budget_0.035": 0.05, "max_drop": 0.43}
TEMPERATURES = [1.7, 1.3, 0.8, 1.1]
SETTINGS = {
    "normalization": NORMALIZATION,
    "thresholds": THRESHOLDS,
    "temperatures": TEMPERATURES,
    "default": "max_drop",
}


@pytest.fixture(scope="module")
def checkpoint_path(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = create_model("resnet18", 10, 4)
    checkpoint = Checkpoint(
        NetworkSpec("resnet18", 10, 4, True, class_names=tuple(CLASS_NAMES)), model.state_dict(), {}, TrainState()
    )
    return checkpoint.save(tmp_path_factory.mktemp("ckpt") / "best.pt")


@pytest.fixture(scope="module")
def served(checkpoint_path) -> ServedModel:
    return ServedModel(Checkpoint.load(checkpoint_path), **SETTINGS)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(12, 32, 32, 3), dtype=np.uint8)


def normalized(images: np.ndarray) -> torch.Tensor:
    return Normalizer(CIFAR10_NORMALIZATION)(torch.from_numpy(images).permute(0, 3, 1, 2))


def middle_threshold(served: ServedModel, images: np.ndarray) -> float:
    """A threshold at which the samples do not all leave at the same classifier."""
    for tau in np.linspace(0.1, 0.3, 41):
        if len(set(served.answer(images, threshold=float(tau))["exit_index"])) > 1:
            return float(tau)
    pytest.fail("no threshold splits the samples over several exits")


# --------------------------------------------------------------------------- in process


def test_answer_equals_predict_on_normalized_images(served, images):
    tau = middle_threshold(served, images)
    answer = served.answer(images, threshold=tau)
    reference = predict(served.model, normalized(images), tau)
    assert answer["class"] == reference.classes.tolist()
    assert answer["exit_index"] == reference.exit_index.tolist()
    assert answer["confidence"] == reference.confidence.double().tolist()
    assert answer["class_name"] == [CLASS_NAMES[c] for c in answer["class"]]
    assert answer["exit"] == [served.names[e] for e in answer["exit_index"]]
    assert list(answer) == ["class", "class_name", "confidence", "exit", "exit_index", "gflops"]
    # uint8 pixels and the same images already normalized give the same answers
    assert served.answer(normalized(images).numpy(), threshold=tau) == answer


def test_thresholds_gflops_and_named_thresholds(served, images):
    k = served.model.num_classifiers
    assert served.answer(images, threshold=0.0)["exit"] == ["exit1"] * len(images)
    assert served.answer(images, threshold=ABOVE_ONE)["exit"] == ["main"] * len(images)
    above = served.answer(images, threshold=1.5)
    assert above["exit_index"] == [k - 1] * len(images)
    # Above 1 no exit head runs: the main output alone, cheaper than reaching it through every exit.
    assert above["gflops"] == [served.costs.main_only] * len(images) < [served.costs.anytime[-1]] * len(images)
    answer = served.answer(images, threshold=middle_threshold(served, images))
    assert answer["gflops"] == [served.costs.anytime[e] for e in answer["exit_index"]]
    assert served.costs.anytime == sorted(served.costs.anytime) and served.costs.anytime[0] > 0
    assert served.answer(images, budget="budget_0.035") == served.answer(images, threshold=0.05)
    assert served.answer(images, use_max_drop=True) == served.answer(images, threshold=0.43)
    assert served.answer(images) == served.answer(images, threshold=0.43)  # the default: max_drop


def test_the_exit_rule_is_a_predict_time_choice(served, checkpoint_path, images):
    """Unset, the model's own rule (the one its named thresholds were fitted with); another rule takes
    an explicit threshold only."""
    x = normalized(images)
    for rule in ("entropy", "margin", "patience"):
        answer = served.answer(images, threshold=0.5, exit_rule=rule)
        reference = predict(served.model, x, 0.5, rule=rule)
        assert answer["exit_index"] == reference.exit_index.tolist() and answer["class"] == reference.classes.tolist()
    # Patience at 0.5 of 4 classifiers: two in a row must agree, so nothing leaves at exit 1.
    assert 0 not in served.answer(images, threshold=0.5, exit_rule="patience")["exit_index"]
    assert served.answer(images, threshold=0.2, exit_rule="confidence") == served.answer(images, threshold=0.2)
    with pytest.raises(
        ValueError,
        match="threshold 'budget_0.035' was fitted for the confidence rule: leave "
        "exit_rule unset, or give an explicit threshold for the entropy rule",
    ):
        served.answer(images, budget="budget_0.035", exit_rule="entropy")
    with pytest.raises(ValueError, match="exit rule 'patient': one of confidence, entropy, margin, patience"):
        served.answer(images, threshold=0.5, exit_rule="patient")
    margin = ServedModel(Checkpoint.load(checkpoint_path), **SETTINGS, exit_rule="margin")
    assert margin.answer(images, budget="budget_0.035") == served.answer(images, threshold=0.05, exit_rule="margin")
    assert margin.answer(images, budget="budget_0.035", exit_rule="margin") == margin.answer(
        images, budget="budget_0.035"
    )


def test_predict_with_unit_temperatures_is_predict_and_keeps_the_logits(served, images):
    x = normalized(images)
    tau = middle_threshold(served, images)
    mine = predict(served.model, x, tau, temperatures=torch.ones(4), keep_logits=True)
    reference = predict(served.model, x, tau)
    for name in ("classes", "exit_index", "confidence"):
        assert torch.equal(getattr(mine, name), getattr(reference, name)), name
    # the logits kept are those of the classifiers each sample went through
    served.model.eval()
    with torch.inference_mode():
        full = served.model(x).logits
    assert [len(rows) for rows in mine.logits] == [e + 1 for e in mine.exit_index.tolist()]
    for i, rows in enumerate(mine.logits):
        for j, row in enumerate(rows):
            torch.testing.assert_close(row, full[j][i].float(), rtol=1e-4, atol=1e-5)


def test_calibrated_answers_use_the_temperatures(served, images):
    tau = middle_threshold(served, images)
    plain, calibrated = served.answer(images, threshold=tau), served.answer(images, threshold=tau, calibrated=True)
    reference = predict(served.model, normalized(images), tau, temperatures=TEMPERATURES)
    assert calibrated["exit_index"] == reference.exit_index.tolist()
    assert calibrated["confidence"] == reference.confidence.double().tolist()
    assert calibrated["confidence"] != plain["confidence"]
    with_logits = served.answer(images, threshold=tau, return_logits=True)
    assert {key: with_logits[key] for key in plain} == plain
    assert [len(rows) for rows in with_logits["logits"]] == [e + 1 for e in plain["exit_index"]]
    assert all(len(row) == 10 for rows in with_logits["logits"] for row in rows)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((2, 3, 32, 32), dtype=np.uint8),  # uint8 must be N x H x W x 3
        np.zeros((32, 32, 3), dtype=np.uint8),  # one image without its batch dimension
        np.zeros((2, 16, 16, 3), dtype=np.uint8),  # the wrong size
        np.zeros((2, 3, 32, 32), dtype=np.float64),  # float64
        [[0, 1, 2]],  # not an array
    ],
)
def test_bad_inputs_are_a_clear_value_error(served, bad):
    with pytest.raises(ValueError, match=r"uint8 raw pixels of shape \(N, 32, 32, 3\) or float32 normalized"):
        served.answer(bad, threshold=0.5)


def test_bad_threshold_choices(served, images):
    with pytest.raises(ValueError, match="no threshold named 'budget_9'"):
        served.answer(images, budget="budget_9")
    with pytest.raises(ValueError, match="not threshold and budget"):
        served.answer(images, threshold=0.3, budget="max_drop")
    with pytest.raises(ValueError, match=">= 0"):
        served.answer(images, threshold=-1.0)
    no_temperatures = ServedModel(served_checkpoint(served), normalization=NORMALIZATION)
    with pytest.raises(ValueError, match="need temperatures"):
        no_temperatures.answer(images, threshold=0.3, calibrated=True)
    with pytest.raises(ValueError, match="no threshold given and no default"):
        no_temperatures.answer(images)


def test_named_thresholds_keep_the_confidences_they_were_fitted_on(served, images):
    """A threshold fitted on calibrated confidences (eval.calibrate) is applied to those, and
    one fitted on raw ones to those: asking for the other kind is refused, not silently wrong."""
    tau = middle_threshold(served, images)
    raw = ServedModel(served_checkpoint(served), **{**SETTINGS, "thresholds": {"fit": tau}, "default": None})
    scaled = ServedModel(
        served_checkpoint(served), **{**SETTINGS, "thresholds": {"fit": tau}, "default": None, "calibrated": True}
    )
    assert served.answer(images, threshold=tau, calibrated=True) != served.answer(images, threshold=tau)
    assert scaled.answer(images, budget="fit") == served.answer(images, threshold=tau, calibrated=True)
    assert raw.answer(images, budget="fit") == served.answer(images, threshold=tau)
    assert scaled.answer(images, budget="fit", calibrated=True) == scaled.answer(images, budget="fit")
    # An explicit threshold judges the raw confidences unless told otherwise, whatever the fit.
    assert scaled.answer(images, threshold=tau) == served.answer(images, threshold=tau)
    with pytest.raises(ValueError, match="'fit' was fitted on calibrated confidences: .* set it to true"):
        scaled.answer(images, budget="fit", calibrated=False)
    with pytest.raises(ValueError, match="'fit' was fitted on raw confidences"):
        raw.answer(images, budget="fit", calibrated=True)
    with pytest.raises(ValueError, match="fitted on calibrated confidences need the temperatures"):
        ServedModel(served_checkpoint(served), normalization=NORMALIZATION, calibrated=True)


def served_checkpoint(served: ServedModel) -> Checkpoint:
    return Checkpoint(
        NetworkSpec("resnet18", 10, 4, True, class_names=tuple(CLASS_NAMES)),
        served.model.state_dict(),
        {},
        TrainState(),
    )


# --------------------------------------------------------------------------- logged and served


@pytest.fixture(scope="module")
def logged(tmp_path_factory, checkpoint_path, images) -> tuple[str, str]:
    from mlflow.tracking import MlflowClient

    from eed.tracking import log_served_model

    store = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{store / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("serving", artifact_location=(store / "artifacts").as_uri())
    run = client.create_run(experiment)
    model_id = log_served_model(
        uri, run.info.run_id, checkpoint_path, SETTINGS, images[:2], loader=load_served, load_defaults=LOAD_DEFAULTS
    )
    client.set_terminated(run.info.run_id)
    return uri, model_id


def as_columns(frame) -> dict[str, list]:
    return {column: frame[column].tolist() for column in frame.columns}


def test_logged_model_answers_like_the_served_model(logged, served, images):
    import mlflow.pyfunc

    from eed.tracking import using_tracking_uri

    uri, model_id = logged
    with using_tracking_uri(uri):
        model = mlflow.pyfunc.load_model(f"models:/{model_id}")
    params = model.metadata.get_params_schema()
    assert [p.name for p in params.params] == [
        "threshold",
        "budget",
        "max_drop",
        "calibrated",
        "return_logits",
        "exit_rule",
    ]
    assert as_columns(model.predict(images, params={"threshold": 0.2})) == served.answer(images, threshold=0.2)
    assert as_columns(model.predict(images)) == served.answer(images)
    assert as_columns(model.predict(images, params={"threshold": 0.2, "calibrated": True})) == served.answer(
        images, threshold=0.2, calibrated=True
    )
    assert as_columns(model.predict(images, params={"budget": "budget_0.035"})) == served.answer(
        images, budget="budget_0.035"
    )
    assert as_columns(model.predict(images, params={"max_drop": True})) == served.answer(images, use_max_drop=True)
    assert as_columns(model.predict(images, params={"threshold": 0.5, "exit_rule": "patience"})) == served.answer(
        images, threshold=0.5, exit_rule="patience"
    )
    with_logits = model.predict(images[:3], params={"threshold": 0.2, "return_logits": True})
    assert as_columns(with_logits)["logits"] == served.answer(images[:3], threshold=0.2, return_logits=True)["logits"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


ROOT = Path(__file__).resolve().parents[1]


def readme_serve_command() -> str:
    """The `eed serve` line README's Deploy section gives."""
    readme = (ROOT / "README.md").read_text()
    (line,) = [line for line in readme.splitlines() if line.startswith(".venv/bin/eed serve models:/<id>")]
    return line.split("#")[0].strip()


@pytest.fixture(scope="module")
def server(logged, tmp_path_factory):
    """README's command as README shows it (`<id>` and the port filled in), run by a shell in a project
    folder holding the venv as `.venv`, with a PATH that does not (nothing activated)."""
    uri, model_id = logged
    port = free_port()
    project = tmp_path_factory.mktemp("project")
    (project / ".venv").symlink_to(Path(sys.executable).parents[1])
    (project / "params.yaml").write_text(f"tracking:\n  uri: {uri}\n")
    log = (project / "server.log").open("w")
    command = readme_serve_command().replace("<id>", model_id).replace("5001", str(port))
    env = {
        **os.environ,
        "PATH": os.pathsep.join(
            part for part in os.environ.get("PATH", "").split(os.pathsep) if Path(part) != Path(sys.executable).parent
        ),
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    process = subprocess.Popen(
        ["bash", "-c", f"exec {command}"],
        cwd=project,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            if process.poll() is not None:
                pytest.fail(f"the server exited ({process.returncode}): {Path(log.name).read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not answer /ping in 600 s: {Path(log.name).read_text()[-3000:]}")
            time.sleep(1)
        yield base
    finally:
        if process.poll() is None:
            os.killpg(process.pid, 15)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
                process.wait()
        log.close()
        said = Path(log.name).read_text()
        assert process.returncode == 0 and said.rstrip().endswith("Stopped (SIGTERM)"), (
            process.returncode,
            said[-3000:],
        )
        assert "Traceback" not in said and "Warning" not in said, said[-3000:]
        assert f"Serving models:/{model_id} on http://127.0.0.1:{port}/invocations" in said, said[-3000:]


def invoke(base: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{base}/invocations", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def test_the_real_server_answers_like_the_served_model(server, served, images):
    status, reply = invoke(server, {"inputs": images.tolist(), "params": {"threshold": 0.2}})
    assert status == 200, reply
    expected = served.answer(images, threshold=0.2)
    rows = reply["predictions"]
    assert {key: [row[key] for row in rows] for key in expected} == expected
    status, reply = invoke(server, {"inputs": images[:2].tolist(), "params": {"budget": "budget_9"}})
    assert status >= 400 and "budget_9" in json.dumps(reply)


def readme_sample_answers() -> list[dict]:
    """The answers README's Deploy section shows (its JSON blocks)."""
    section = (ROOT / "README.md").read_text().split("## Deploy", 1)[1].split("\n## ", 1)[0]
    return [json.loads(block.split("```", 1)[0]) for block in section.split("```json\n")[1:]]


def test_readmes_sample_answers_are_what_the_real_server_sends(server, images):
    """README shows the server's answer as it comes: {"predictions": [...]}, one row per image with
    the fields and types the real server sends, floats in full (not rounded for the page)."""
    status, reply = invoke(server, {"inputs": images[:3].tolist()})
    assert status == 200, reply
    samples = readme_sample_answers()
    assert samples, "README's Deploy section shows no answer"
    for sample in samples:
        assert set(sample) == set(reply) == {"predictions"} and len(sample["predictions"]) == 3, sample
        for shown, real in zip(sample["predictions"], reply["predictions"]):
            assert {key: type(value) for key, value in shown.items()} == {
                key: type(value) for key, value in real.items()
            }
        assert any(len(repr(row["confidence"]).split(".")[1]) > 4 for row in sample["predictions"]), sample


def test_the_real_server_refuses_with_eeds_own_one_line_reason(server, images):
    """An unknown budget, a negative threshold or float pixels are refused (400) with eed's reason as
    the message: one line, no echo of the input, no stack trace exposing the server's paths. Float
    pixels are never cast to uint8 (0.5 would become 0)."""
    pixels = images[:2].tolist()
    cases = [
        ({"inputs": pixels, "params": {"budget": "budget_9"}}, "no threshold named 'budget_9'"),
        ({"inputs": pixels, "params": {"threshold": -1.0}}, "threshold must be a number >= 0"),
        ({"inputs": (images[:2] / 2).tolist(), "params": {"threshold": 0.2}}, "raw pixels must be integers"),
        ({"inputs": (images[:2].astype(float) + 256).tolist()}, "raw pixels must be integers 0..255"),
    ]
    for body, reason in cases:
        status, reply = invoke(server, body)
        assert status == 400, reply
        assert reply["message"].startswith(reason) and "\n" not in reply["message"], reply["message"][:500]
        assert "stack_trace" not in reply and "Traceback" not in json.dumps(reply)
    status, reply = invoke(server, {"inputs": images[:2].astype(float).tolist(), "params": {"threshold": 0.2}})
    assert status == 200, reply  # integral values are pixels, whatever JSON's number type


def test_the_real_server_refuses_a_param_the_model_does_not_take(server, images):
    """MLflow's own server drops an unknown param with a warning in its log (a misspelled threshold would
    answer with the default one); eed serve refuses it, naming it and the params the model takes."""
    status, reply = invoke(server, {"inputs": images[:2].tolist(), "params": {"treshold": 0.2}})
    assert status == 400, reply
    assert reply["message"] == (
        "unknown param 'treshold': this model takes threshold, budget, max_drop, calibrated, return_logits, exit_rule"
    ), reply


def test_eed_serve_names_a_model_that_is_not_there_in_one_line(logged, tmp_path):
    uri, _ = logged
    (tmp_path / "params.yaml").write_text(f"tracking:\n  uri: {uri}\n")
    done = subprocess.run(
        [sys.executable, "-m", "eed.cli", "serve", "models:/m-0123456789abcdef"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and len(lines) == 1 and "models:/m-0123456789abcdef" in lines[0], done.stderr


def test_eed_serve_compiled_refuses_a_model_logged_without_load_options_in_one_line(tmp_path):
    """A pyfunc model logged without a model_config would load with --compiled ignored (MLflow only warns
    in its log): eed serve --compiled says so instead of serving it eager."""
    import mlflow
    import mlflow.pyfunc

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return model_input

    uri = f"sqlite:///{tmp_path / 'old.db'}"
    mlflow.set_tracking_uri(uri)
    try:  # artifacts in tmp_path (a sqlite store's default artifact root is ./mlruns)
        experiment = mlflow.create_experiment("old", artifact_location=(tmp_path / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment):
            model_id = mlflow.pyfunc.log_model(name="old", python_model=Echo()).model_id
    finally:
        mlflow.set_tracking_uri(None)
    (tmp_path / "params.yaml").write_text(f"tracking:\n  uri: {uri}\n")
    done = subprocess.run(
        [sys.executable, "-m", "eed.cli", "serve", f"models:/{model_id}", "--compiled", "--port", str(free_port())],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and len(lines) == 1, done.stderr
    assert f"models:/{model_id} was logged before it took load-time options (compiled)" in lines[0], lines


def test_the_served_model_takes_raw_pixels_as_any_integral_numbers(served, images):
    expected = served.answer(images, threshold=0.2)
    assert served.answer(images.astype(np.int64), threshold=0.2) == expected
    assert served.answer(images.astype(np.float64), threshold=0.2) == expected
    with pytest.raises(ValueError, match=r"raw pixels must be integers 0..255 \(got 0.5\)"):
        served.answer(np.full(images.shape, 0.5), threshold=0.2)
    with pytest.raises(ValueError, match=r"raw pixels must be integers 0..255 \(got 300\)"):
        served.answer(np.full(images.shape, 300, dtype=np.int64), threshold=0.2)
    with pytest.raises(ValueError, match=r"raw pixels must be integers 0..255 \(got 0.5\)"):  # normalized, NHWC
        served.answer(np.full(images.shape, 0.5, dtype=np.float32), threshold=0.2)


NO_EDITABLE_EED = """
import sys
# Drop the editable install's finder: eed must come from the model's own code copy.
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in str(getattr(f, "__module__", ""))]
try:
    import eed
    sys.exit("eed importable without the model: " + eed.__file__)
except ImportError:
    pass
import json, mlflow.pyfunc, numpy as np
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model("models:/" + sys.argv[2])
import eed
images = np.asarray(json.loads(sys.argv[3]), dtype=np.uint8)
print(json.dumps({"eed": eed.__file__, "answer": model.predict(images, params={"threshold": 0.2}).to_dict("list")}))
"""


def test_the_logged_model_brings_its_own_eed(logged, served, images, tmp_path):
    uri, model_id = logged
    done = subprocess.run(
        [sys.executable, "-c", NO_EDITABLE_EED, uri, model_id, json.dumps(images[:3].tolist())],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    reply = json.loads(done.stdout.strip().splitlines()[-1])
    assert f"{model_id}/artifacts/code/eed/" in reply["eed"]
    assert reply["answer"] == served.answer(images[:3], threshold=0.2)


def test_the_logged_model_loads_eager_by_default_or_compiled_when_asked(logged):
    """Eager is the logged default (a server's single requests are faster eager, BENCHMARKS.md);
    model_config={"compiled": true} (eed serve --compiled, SERVING_MODEL_CONFIG for mlflow models serve)
    compiles."""
    import mlflow.models
    import mlflow.pyfunc

    from eed.tracking import using_tracking_uri

    uri, model_id = logged
    with using_tracking_uri(uri):
        default = mlflow.pyfunc.load_model(f"models:/{model_id}")
        flavor = mlflow.models.get_model_info(f"models:/{model_id}").flavors["python_function"]
    assert not default.unwrap_python_model().served.compiled
    assert flavor["config"] == {"compiled": False}


def test_eed_serve_takes_both_load_options_for_a_model_logged_with_them(logged, monkeypatch):
    """What eed serve --compiled / --eager load (the app is built, nothing listens). Compiling itself is
    replaced by the eager pieces here (tests/test_compiled.py compiles for real): what is checked is that
    the option reaches the model."""
    import eed.inference.served as served_module
    from eed.inference.early_exit import eager_runner
    from eed.tracking import server

    monkeypatch.setattr(served_module, "compiled_runner", lambda model, image_size: eager_runner(model))
    uri, model_id = logged
    for compiled in (True, False):
        app = server.serving_app(uri, f"models:/{model_id}", {"compiled": compiled})
        assert app is not None


def test_a_network_that_does_not_compile_is_served_eager_with_one_warning(checkpoint_path, images, monkeypatch, caplog):
    import eed.inference.served as served_module

    def no_compiler(model, image_size):
        raise RuntimeError("InductorError: CppCompileError: C++ compile error\nCommand: g++ ...")

    monkeypatch.setattr(served_module, "compiled_runner", no_compiler)
    with caplog.at_level("WARNING", logger="eed.inference.served"):
        model = load_served(checkpoint_path, SETTINGS, {"compiled": True})
    assert not model.compiled
    assert [record.getMessage() for record in caplog.records] == [
        "compiling the network failed (RuntimeError: InductorError: CppCompileError: C++ compile error); "
        "answering eager"
    ]
    assert model.answer(images, threshold=0.2) == load_served(checkpoint_path, SETTINGS, {"compiled": False}).answer(
        images, threshold=0.2
    )


def test_the_logged_model_loads_compiled_when_asked_and_answers_as_eager(logged, served, images, monkeypatch):
    """model_config={"compiled": true} reaches the served model, which then answers through its compiled
    runner. The runner is the eager pieces returned where compiled_runner would be: that compiled pieces give
    the eager answers is tests/test_compiled.py's (a real compile takes a minute of this CPU)."""
    import mlflow.pyfunc

    import eed.inference.served as served_module
    from eed.inference.early_exit import eager_runner
    from eed.tracking import using_tracking_uri

    built = []

    def compiled_runner(model, image_size):
        built.append(image_size)
        return eager_runner(model)

    monkeypatch.setattr(served_module, "compiled_runner", compiled_runner)
    uri, model_id = logged
    with using_tracking_uri(uri):
        model = mlflow.pyfunc.load_model(f"models:/{model_id}", model_config={"compiled": True})
    inner = model.unwrap_python_model().served
    assert inner.compiled and not served.compiled and built == [inner.image_size]
    for params in ({"threshold": middle_threshold(served, images)}, {}, {"threshold": 0.5, "exit_rule": "margin"}):
        assert as_columns(model.predict(images, params=params)) == served.answer(images, **params), params


def test_load_served_checks_its_settings(checkpoint_path, images):
    assert load_served(checkpoint_path, SETTINGS).answer(images, threshold=0.2) == ServedModel(
        Checkpoint.load(checkpoint_path), **SETTINGS
    ).answer(images, threshold=0.2)
    with pytest.raises(ValueError, match="normalization required"):
        load_served(checkpoint_path, {"thresholds": THRESHOLDS})
    with pytest.raises(ValueError, match="got \\['normalization', 'treshold'\\]"):
        load_served(checkpoint_path, {"normalization": NORMALIZATION, "treshold": 0.3})
    with pytest.raises(ValueError, match=r"a served model loads with the options compiled; got \['compile'\]"):
        load_served(checkpoint_path, SETTINGS, {"compile": True})


def test_eed_serve_on_a_port_in_use_is_one_line_naming_the_port(logged, tmp_path):
    uri, model_id = logged
    (tmp_path / "params.yaml").write_text(f"tracking:\n  uri: {uri}\n")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "eed.cli", "serve", f"models:/{model_id}", "--port", str(port)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: --port {port}: cannot listen on 127.0.0.1:{port} (Address already in use)")
