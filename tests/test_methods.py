"""The methods table (eed/methods.py): each method is one row, and everything that depends on the
method reads the row; a sixth method is one row more."""

from __future__ import annotations

import json

import pytest

from eed.config import ConfigError, LossConfig, load_config
from eed.engine.trainer import train
from eed.methods import MethodSpec, get_method, method_names, registered
from eed.objectives import ExitEnsembleObjective
from eed.reporting.comparison import ignored_settings

# Every classifier, the main output too, learns the main output's logits: a row no paper method has.
TOY = MethodSpec(
    "mainteach",
    "every classifier learns the main output's logits (a toy)",
    cross_entropy="all",
    students="all",
    teacher="main",
    feature_loss="unused",
)


def test_the_paper_methods_are_rows_in_the_papers_order():
    assert method_names() == ("baseline", "branchynet", "distill", "byot", "eed")
    assert [get_method(m).loss_keys for m in method_names()] == [
        (),
        (),
        ("output", "alpha", "temperature"),
        ("output", "alpha", "beta", "temperature"),
        ("output", "alpha", "beta", "temperature", "teacher"),
    ]
    assert [get_method(m).exits for m in method_names()] == [False, True, True, True, True]


def test_an_inconsistent_row_is_refused():
    with pytest.raises(ValueError, match="students need a teacher"):
        MethodSpec("x", "", "all", "exits", "none", "unused")
    with pytest.raises(ValueError, match="feature loss needs students"):
        MethodSpec("x", "", "all", "none", "none", "optional")
    with (
        pytest.raises(ValueError, match="already registered"),
        registered(MethodSpec("eed", "", "all", "all", "chosen", "optional")),
    ):
        pass


def test_a_sixth_method_added_in_one_place_validates_plans_describes_compares_and_trains(tmp_path):
    from eed.data import prepare

    with registered(TOY):
        overrides = {
            "method": "mainteach",
            "data.dataset": "synthetic",
            "data.backend": "tensor",
            "data.val_size": 32,
            "data.prepared_dir": str(tmp_path / "prepared"),
            "data.num_workers": 1,
            "data.synthetic.num_train": 160,
            "data.synthetic.num_test": 32,
            "data.train_subset": 0,
            "model.width": 4,
            "train.epochs": 1,
            "train.batch_size": 32,
            "train.device": "cpu",
            "tracking.enabled": False,
        }
        config = load_config(
            None,
            [f"{key}={json.dumps(value) if isinstance(value, bool) else value}" for key, value in overrides.items()],
        )
        with pytest.raises(ConfigError, match="loss.teacher: only method 'eed'"):
            load_config(None, ["method=mainteach", "loss.teacher=[1]"])

        objective = ExitEnsembleObjective("mainteach", config.loss, 4)
        assert objective.plan.students == (0, 1, 2, 3) and objective.plan.teachers == (3,)
        assert objective.plan.beta == 0 and objective.plan.alpha == 1.0
        assert objective.describe() == (
            "mainteach: CE on 4 classifiers + 1.0·mse(Z_i, Z_main) for i in exit1..main; "
            "β=0 (mainteach has no feature loss; loss.beta is ignored)"
        )
        key = {
            "method": "mainteach",
            **{f"loss.{name}": "x" for name in ("output", "alpha", "beta", "temperature", "teacher")},
        }
        assert ignored_settings(key) == {"loss.beta", "loss.teacher", "loss.temperature"}  # T: the loss is mse

        prepare(config)
        result = train(config, tmp_path / "train")
        assert result.epochs_completed == 1
        assert {"train/loss_kd_exit1", "train/loss_kd_main", "train/loss_ce_main"} <= set(result.history)
        assert not any(name.startswith("train/loss_feat_") for name in result.history)
    assert "mainteach" not in method_names()
    with pytest.raises(ConfigError, match="unknown method 'mainteach'"):
        load_config(None, ["method=mainteach"])
    with pytest.raises(ConfigError, match="unknown method"):
        ExitEnsembleObjective("mainteach", LossConfig(), 4)
