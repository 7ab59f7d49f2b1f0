"""eed/paper_numbers.yaml: it loads, its names are this project's, and it holds the numbers the
paper's own prose quotes from its tables (each check below cites the sentence it tests)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from eed.methods import get_method, method_names
from eed.paper_numbers import (
    DATA_FILE,
    OUTPUTS,
    PaperAccuracy,
    load_paper_numbers,
    load_paper_numbers_from,
    paper_accuracy,
)

# The paper's text, where this project's machines keep it (beside the repository, as ../shared/data).
PAPER_TEXT = Path(__file__).resolve().parents[2] / "shared" / "paper" / "exit-ensemble-distillation.txt"
TABLE_I_ARCHS = ("vgg19", "resnet18", "resnet50", "resnet101")
PREVIOUS = ("branchynet", "distill", "byot")  # the methods "without EED" in Table I


def rows(table: str, arch: str, *methods: str) -> list[PaperAccuracy]:
    return [
        e
        for e in load_paper_numbers().accuracy
        if e.table == table and e.arch == arch and (not methods or e.method in methods)
    ]


def best(entries: list[PaperAccuracy], output: str = "main") -> float:
    return max(e.percent[output] for e in entries if output in e.percent)


def gflops(arch: str) -> dict[str, float]:
    (entry,) = [g for g in load_paper_numbers().gflops if g.arch == arch]
    return entry.gflops


def test_it_loads_every_table():
    numbers = load_paper_numbers()
    assert numbers.source and numbers.protocol
    counts = {t: sum(e.table == t for e in numbers.accuracy) for t in ("I", "II", "IV")}
    assert counts == {"I": 4 * 10, "II": 6 * 3, "IV": 6}
    assert [g.arch for g in numbers.gflops] == list(TABLE_I_ARCHS)


def test_names_are_this_projects():
    from eed.models import (
        list_backbones,  # imports torch: the registry is the reference
    )

    for entry in load_paper_numbers().accuracy:
        assert entry.method in method_names(), entry
        assert set(entry.loss) <= set(get_method(entry.method).loss_keys), entry
        assert entry.arch in list_backbones(), entry
        assert set(entry.percent) <= set(OUTPUTS) and entry.percent, entry
    assert all(g.arch in list_backbones() for g in load_paper_numbers().gflops)


def test_every_number_is_printed_in_the_paper():
    if not PAPER_TEXT.exists():
        pytest.skip(f"{PAPER_TEXT} is not on this machine")
    printed = set(re.findall(r"^\d+\.\d\d$", PAPER_TEXT.read_text(encoding="utf-8"), flags=re.MULTILINE))
    literals = re.findall(r"(?:exit\d|main): (\d+\.\d+)", DATA_FILE.read_text(encoding="utf-8"))
    assert len(literals) == 4 * 37 + 9 * 4 + 9 * 3 + 6 + 4 * 4  # Tables I, II, IV, III: every cell
    assert set(literals) <= printed


def test_multi_exits_beat_the_baseline():
    # "when we compare ... only CE (the first two rows), the use of multi-exits allows us to obtain
    # better performance of the main network in all cases"
    for arch in TABLE_I_ARCHS:
        assert best(rows("I", arch, "branchynet")) > best(rows("I", arch, "baseline")), arch


def test_resnet50_early_exits_gain_from_output_distillation():
    # "ResNet-50 achieves the greatest performance improvement of the early exits by 2.16% for
    # exit 1 and 2.83% for exit 2" (output distillation [19], beta = 0, over CE (2))
    def gain(arch: str, output: str) -> float:
        return round(best(rows("I", arch, "distill"), output) - best(rows("I", arch, "branchynet"), output), 2)

    assert (gain("resnet50", "exit1"), gain("resnet50", "exit2")) == (2.16, 2.83)
    assert max(TABLE_I_ARCHS, key=lambda a: gain(a, "exit2")) == "resnet50"
    assert max(TABLE_I_ARCHS, key=lambda a: gain(a, "exit1") + gain(a, "exit2")) == "resnet50"


@pytest.mark.parametrize(
    ("arch", "output", "before", "after", "diff"),
    [
        # "The differences between the maximum performance of the main network without and with EED are
        # 0.73% for VGG19 (75.29% → 76.02%), 0.67% for ResNet-18 (78.58% → 79.25%), 1.02% for ResNet-50
        # (80.99% → 82.01%), and 0.89% for ResNet-101 (81.14% → 82.03%)."
        ("vgg19", "main", 75.29, 76.02, 0.73),
        ("resnet18", "main", 78.58, 79.25, 0.67),
        ("resnet50", "main", 80.99, 82.01, 1.02),
        ("resnet101", "main", 81.14, 82.03, 0.89),
        # "... of exit 3 without and with EED are 1.20% for VGG19 (75.02% → 76.22%), 0.45% for ResNet-18
        # (78.30% → 78.75%), 0.77% for ResNet-50 (80.94% → 81.71%), and 0.84% for ResNet101 (81.35% → 82.19%)."
        ("vgg19", "exit3", 75.02, 76.22, 1.20),
        ("resnet18", "exit3", 78.30, 78.75, 0.45),
        ("resnet50", "exit3", 80.94, 81.71, 0.77),
        ("resnet101", "exit3", 81.35, 82.19, 0.84),
    ],
)
def test_table_i_max_without_and_with_eed(arch, output, before, after, diff):
    assert best(rows("I", arch, *PREVIOUS), output) == before
    assert best(rows("I", arch, "eed"), output) == after
    assert round(after - before, 2) == diff


def test_eed_wins_with_and_without_the_feature_loss():
    # "the proposed method significantly improves the performance of the main network in all cases
    # regardless of whether the feature distillation is used (α = 1, β = 1) or not (α = 1, β = 0)"
    for arch in TABLE_I_ARCHS:
        previous = best(rows("I", arch, *PREVIOUS))
        for beta in (0, 1):
            assert best([e for e in rows("I", arch, "eed") if e.loss["beta"] == beta]) > previous, (arch, beta)


@pytest.mark.parametrize(
    "arch", ["resnet152", "resnext29", "wrn28_10", "pyramidnet110_270", "imagenet_resnet18", "imagenet_resnet50"]
)
def test_table_ii_eed_has_the_best_main_output(arch):
    # caption: "The proposed EED method achieves better performance of the main network than the
    # previous methods in all cases"; three-block networks have no exit 3
    assert best(rows("II", arch, "eed")) > best(rows("II", arch, "branchynet", "distill"))
    three_blocks = arch in ("resnext29", "wrn28_10", "pyramidnet110_270")
    assert all(("exit3" in e.percent) != three_blocks for e in rows("II", arch))


def test_table_ii_imagenet_gains():
    # "The performance improvement of the main network is 0.20% for ResNet-18 and 0.15% for ResNet50."
    for arch, diff in (("imagenet_resnet18", 0.20), ("imagenet_resnet50", 0.15)):
        gain = best(rows("II", arch, "eed")) - best(rows("II", arch, "branchynet", "distill"))
        assert round(gain, 2) == diff, arch


def test_table_iii_flops():
    # "with ResNet-101, the difference between the maximum performance of exit 2 and the main network
    # is 3.72%, but exit 2 only needs 28.2% (1.42/5.04) of FLOPs required for the main network"
    resnet101 = gflops("resnet101")
    assert (resnet101["exit2"], resnet101["main"]) == (1.42, 5.04)
    assert round(100 * resnet101["exit2"] / resnet101["main"], 1) == 28.2
    assert round(best(rows("I", "resnet101")) - best(rows("I", "resnet101"), "exit2"), 2) == 3.72
    # "In the case of ResNet-50 and ResNet-101, exit 3 needs more FLOPs than the main network"
    assert [a for a in TABLE_I_ARCHS if gflops(a)["exit3"] > gflops(a)["main"]] == ["resnet50", "resnet101"]


def test_table_iv_teachers():
    table = {e.row: e.percent["main"] for e in rows("IV", "resnet18")}
    # "When the ensemble of exit 1 and the main network is used as a teacher, the performance of the
    # main network is higher (78.80%) than when the ensemble of exit 3 and the main network is used (78.25%)."
    assert (table["Exit1 + Main"], table["Exit3 + Main"]) == (78.80, 78.25)
    # "the performance of the main network gradually improves as more exits are used together"
    assert max(table, key=table.get) == "Exit1 + Exit2 + Exit3 + Main"


def test_table_iv_is_the_mse_beta_0_setting_of_table_i():
    teacher_main = paper_accuracy("cifar100", "resnet18", "distill", {"output": "mse"})
    assert {e.table for e in teacher_main} == {"I", "IV"}
    assert len({e.percent["main"] for e in teacher_main}) == 1  # 78.31 in both
    all_classifiers = paper_accuracy("cifar100", "resnet18", "eed", {"output": "mse", "beta": 0})
    assert [(e.table, e.percent["main"]) for e in all_classifiers] == [("I", 79.25), ("IV", 79.25)]


def test_lookups_compare_canonically():
    query = {"output": "MSE", "beta": 1.0, "alpha": 1, "temperature": 3.0, "teacher": None}
    (entry,) = paper_accuracy("cifar100", "resnet18", "eed", query)
    assert (entry.table, entry.row, entry.percent["main"]) == ("I", "α = 1 (MSE), β = 1 in (8)", 79.24)
    (subset,) = paper_accuracy("cifar100", "resnet18", "eed", {"output": "mse", "beta": "0", "teacher": ["main", 1]})
    assert (subset.row, subset.percent) == ("Exit1 + Main", {"main": 78.80})
    assert [e.row for e in paper_accuracy("cifar100", "resnet18", "branchynet", {})] == ["CE (2)"]
    assert paper_accuracy("cifar100", "resnet18", "eed", {"output": "kl", "beta": 0, "teacher": [3]}) == []
    assert paper_accuracy("imagenet", "resnet18", "eed", {"output": "kl", "beta": 0}) == []


GOOD_ENTRY = {
    "table": "I",
    "row": "bad row",
    "dataset": "cifar100",
    "arch": "resnet18",
    "method": "eed",
    "loss": {"output": "kl", "beta": 0},
    "percent": {"exit1": 70.0, "main": 79.0},
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"method": "eed2"}, "method 'eed2'"),
        ({"percent": {"main": 101.0}}, r"percent.main = 101.0"),
        ({"percent": {"exit4": 70.0}}, "unknown key 'exit4'"),
        ({"extra": 1}, "unknown key 'extra'"),
        ({"loss": {"output": "kl", "beta": 0, "epochs": 4}}, "unknown key 'epochs'"),
        ({"method": "branchynet", "loss": {"output": "kl"}}, "unknown key 'output'"),  # CE only: reads no loss key
        ({"method": "distill"}, "unknown key 'beta'"),
        ({"loss": {"output": "l1"}}, "loss.output 'l1'"),
    ],
)
def test_a_malformed_entry_is_named(tmp_path, change, message):
    data = {
        "source": "s",
        "protocol": "p",
        "gflops": [],
        "accuracy": [dict(GOOD_ENTRY, row="fine row"), dict(GOOD_ENTRY, **change)],
    }
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.yaml: accuracy\[1\] \(table I, resnet18, 'bad row'\)") as error:
        load_paper_numbers_from(path)
    assert re.search(message, str(error.value)), error.value


def test_the_good_entry_of_the_malformed_tests_loads(tmp_path):
    path = tmp_path / "good.yaml"
    path.write_text(yaml.safe_dump({"source": "s", "protocol": "p", "accuracy": [GOOD_ENTRY], "gflops": []}))
    assert load_paper_numbers_from(path).accuracy[0].percent == {"exit1": 70.0, "main": 79.0}
