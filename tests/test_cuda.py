"""eed's CUDA paths on a real GPU, each checked against the CPU where that makes sense: bf16
and fp16 autocast steps, channels_last, a ``torch.compile`` step, FFCV's ``ToDevice`` loader
with non-blocking transfers, one DistributedDataParallel step, early-exit ``predict`` and the
served model.

Marked ``cuda`` (``pytest -m cuda``; ``bench/gpu_check.sh`` runs them on a GPU machine) and
skipped, with the reason, where ``torch.cuda.is_available()`` is false. The same logic runs
on the CPU in the rest of the suite (test_training_step, test_data_loaders, test_multinode,
test_anytime, test_serving).
"""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from eed.config import LossConfig, TrainConfig, load_config
from eed.data.catalog import CIFAR100_NORMALIZATION
from eed.models.registry import create_model
from eed.objectives import ExitEnsembleObjective

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs a CUDA device (torch.cuda.is_available() is false); run on a GPU machine "
        "with `make gpu-check` or `pytest -m cuda`",
    ),
]

CLASSES = 100
WIDTH = 8


@pytest.fixture(autouse=True)
def _exact_float32():
    """fp32 comparisons against the CPU mean fp32 on the GPU too: TF32 off while a test runs."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def network(seed: int = 0) -> torch.nn.Module:
    """A small multi-exit ResNet-18 whose BatchNorm statistics have seen a few batches, so that
    eval-mode outputs are those of a used network rather than of the identity statistics."""
    torch.manual_seed(seed)
    model = create_model("resnet18", CLASSES, WIDTH, exits=True)
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(32, 3, 32, 32))
    return model


def batch(n: int = 32, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 3, 32, 32, generator=generator), torch.randint(0, CLASSES, (n,), generator=generator))


def objective() -> ExitEnsembleObjective:
    return ExitEnsembleObjective("eed", LossConfig(), 4)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double().cpu() - b.double().cpu()).norm() / b.double().cpu().norm().clamp_min(1e-12))


# --------------------------------------------------------------------------- one training step


def sgd_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, autocast) -> tuple[float, torch.Tensor]:
    """One step as eed.engine.loops.train_one_epoch takes it; the loss and the main output's logits."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with autocast():
        output = model(x)
        loss = objective()(output, y).total
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss), output.logits[-1]


@pytest.mark.parametrize(
    ("precision", "dtype", "tolerance"), [("bf16", torch.bfloat16, 0.05), ("fp16", torch.float16, 0.02)]
)
def test_autocast_step_matches_the_cpu(precision, dtype, tolerance):
    from eed.engine.runtime import setup_runtime

    runtime = setup_runtime(TrainConfig(device="cuda", precision=precision, channels_last="off"))
    assert runtime.device.type == "cuda" and runtime.autocast_dtype == dtype
    x, y = batch()
    cpu, gpu = network().train(), network().train().to(runtime.device)
    cpu_loss, _ = sgd_step(cpu, x, y, lambda: torch.autocast("cpu", enabled=False))
    gpu_loss, logits = sgd_step(gpu, x.to(runtime.device), y.to(runtime.device), runtime.autocast)
    assert logits.dtype == dtype  # the network really ran in reduced precision
    assert np.isfinite(gpu_loss) and abs(gpu_loss - cpu_loss) / cpu_loss < tolerance
    for (name, _p_cpu), p_gpu in zip(cpu.named_parameters(), gpu.parameters()):
        assert torch.isfinite(p_gpu).all(), name
    # The step moved the weights the way the CPU's fp32 step did (up to the precision).
    moved_cpu = torch.cat([p.detach().flatten() for p in cpu.parameters()]) - torch.cat(
        [p.detach().flatten() for p in network().parameters()]
    )
    moved_gpu = torch.cat([p.detach().cpu().flatten() for p in gpu.parameters()]) - torch.cat(
        [p.detach().flatten() for p in network().parameters()]
    )
    assert relative(moved_gpu, moved_cpu) < 10 * tolerance


def test_channels_last_step_matches_contiguous_and_the_cpu():
    from eed.engine.runtime import setup_runtime

    runtime = setup_runtime(TrainConfig(device="cuda", precision="fp32", channels_last="on"))
    assert runtime.channels_last and runtime.autocast_dtype is None
    x, y = batch()
    cpu = network().train()
    cpu_loss, cpu_logits = sgd_step(cpu, x, y, lambda: torch.autocast("cpu", enabled=False))
    model = network().to(runtime.device).to(memory_format=torch.channels_last).train()
    inputs = x.to(runtime.device).contiguous(memory_format=torch.channels_last)
    loss, logits = sgd_step(model, inputs, y.to(runtime.device), runtime.autocast)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert abs(loss - cpu_loss) / cpu_loss < 1e-3 and relative(logits, cpu_logits) < 1e-3
    for p_cpu, p_gpu in zip(cpu.parameters(), model.parameters()):
        torch.testing.assert_close(p_gpu.detach().cpu(), p_cpu.detach(), rtol=1e-3, atol=1e-4)


def test_compiled_step_matches_the_eager_one():
    x, y = batch()
    device = torch.device("cuda")
    eager = network().train().to(device)
    compiled_net = network().train().to(device)
    compiled = torch.compile(compiled_net)  # what train.compile: true does in eed.engine.trainer
    eager_loss, eager_logits = sgd_step(
        eager, x.to(device), y.to(device), lambda: torch.autocast("cuda", enabled=False)
    )
    loss, logits = sgd_step(compiled, x.to(device), y.to(device), lambda: torch.autocast("cuda", enabled=False))
    assert abs(loss - eager_loss) / eager_loss < 1e-3 and relative(logits, eager_logits) < 1e-3
    for p_eager, p_compiled in zip(eager.parameters(), compiled_net.parameters()):
        torch.testing.assert_close(p_compiled, p_eager, rtol=1e-3, atol=1e-4)


# --------------------------------------------------------------------------- data


def test_ffcv_to_device_loader_matches_the_cpu_loader(cifar100_prepared):
    from eed.data import make_loader
    from eed.data.loaders import FFCVEpochLoader

    def config(channels_last: str):
        return load_config(
            None,
            [
                f"data.prepared_dir={cifar100_prepared}",
                "data.backend=ffcv",
                "train.batch_size=256",
                "data.num_workers=4",
                f"train.channels_last={channels_last}",
            ],
        )

    cpu = make_loader(config("off"), "test", train=False, device="cpu")
    gpu = make_loader(config("on"), "test", train=False, device="cuda")
    assert isinstance(gpu, FFCVEpochLoader)
    ops = gpu.ffcv_loader.pipeline_specs["image"].transforms
    to_device = [op for op in ops if type(op).__name__ == "ToDevice"]
    assert to_device and all(op.non_blocking for op in to_device)  # the transfer does not wait
    batches = 0
    for (images, labels), (cpu_images, cpu_labels) in zip(gpu, cpu):
        assert images.device.type == "cuda" and labels.device.type == "cuda" and labels.dtype == torch.int64
        assert images.dtype == torch.float32 and images.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(labels.cpu(), cpu_labels)
        torch.testing.assert_close(images.cpu(), cpu_images, atol=1e-4, rtol=1e-5)
        batches += 1
    assert batches == len(cpu)
    half = make_loader(config("on"), "test", train=False, device="cuda", image_dtype=torch.bfloat16)
    images, _ = next(iter(half))
    assert images.dtype == torch.bfloat16 and images.device.type == "cuda"


# --------------------------------------------------------------------------- DDP


def _ddp_worker(rank: int, world_size: int, init_file: str, backend: str, result_dir: str) -> None:
    import torch.distributed as dist

    from eed.engine.runtime import setup_runtime

    if backend == "nccl":  # the trainer's own path: torchrun's variables, setup_runtime joins NCCL
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
        dist.init_process_group("nccl", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
        device = setup_runtime(TrainConfig(device="cuda", precision="fp32")).device
    else:  # one GPU: both ranks share it, which NCCL refuses and gloo allows
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
        device = torch.device("cuda", 0)
        torch.cuda.set_device(device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    x, y = batch(64)
    model = network().train().to(device)
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index])
    shard = slice(rank * 32, (rank + 1) * 32)
    sgd_step(ddp, x[shard].to(device), y[shard].to(device), lambda: torch.autocast("cuda", enabled=False))
    torch.save({name: p.detach().cpu() for name, p in model.named_parameters()}, f"{result_dir}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def test_one_ddp_step_averages_the_ranks_gradients():
    """Each rank trains on its half of a batch; DDP must leave every rank with the weights of one
    step on the mean of the two halves' gradients (BatchNorm per half, as each rank sees it)."""
    import torch.multiprocessing as mp

    backend = "nccl" if torch.cuda.device_count() >= 2 else "gloo"
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(_ddp_worker, args=(2, f"{folder}/init", backend, folder), nprocs=2, join=True)
        ranks = [torch.load(Path(folder) / f"rank{r}.pt") for r in (0, 1)]

    x, y = batch(64)
    reference = network().train()
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9)
    loss = sum(objective()(reference(x[s]), y[s]).total for s in (slice(0, 32), slice(32, 64))) / 2
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    initial = dict(network().named_parameters())
    for name, p in reference.named_parameters():
        torch.testing.assert_close(ranks[0][name], ranks[1][name], rtol=0, atol=0)  # the ranks agree exactly
        torch.testing.assert_close(ranks[0][name], p.detach(), rtol=1e-3, atol=1e-5)
    assert any(not torch.equal(ranks[0][n], initial[n].detach()) for n in initial)


# --------------------------------------------------------------------------- inference


def separated_threshold(confidence: torch.Tensor) -> float:
    """A threshold near the median confidence, midway in the widest gap nearby, so that float
    differences between devices cannot move a sample across it."""
    values = confidence.sort().values
    middle = len(values) // 2
    window = range(max(1, middle - 8), min(len(values), middle + 8))
    i = max(window, key=lambda j: float(values[j] - values[j - 1]))
    return float(values[i - 1] + values[i]) / 2


def test_predict_on_cuda_gives_the_cpu_classes_and_exits():
    from eed.inference.early_exit import predict
    from eed.metrics.anytime import confidences

    model = network().eval()
    x, _ = batch(256)
    with torch.no_grad():
        first = model(x).logits[0]
    threshold = separated_threshold(confidences(first)[0])
    cpu = predict(model, x, threshold, count_stages=True)
    gpu = predict(copy.deepcopy(model).cuda(), x.cuda(), threshold, count_stages=True)
    assert gpu.classes.device.type == "cuda"
    assert 0 < int((cpu.exit_index == 0).sum()) < len(x)  # some left early, some did not
    assert torch.equal(gpu.exit_index.cpu(), cpu.exit_index) and gpu.stage_samples == cpu.stage_samples
    assert torch.equal(gpu.classes.cpu(), cpu.classes)
    torch.testing.assert_close(gpu.confidence.cpu(), cpu.confidence, rtol=1e-4, atol=1e-5)


def test_served_model_on_cuda_answers_as_on_the_cpu():
    from eed.inference.served import ServedModel
    from eed.metrics.anytime import confidences

    model = network().eval()
    checkpoint = {
        "arch": "resnet18",
        "num_classes": CLASSES,
        "width": WIDTH,
        "exits": True,
        "model": model.state_dict(),
        "class_names": [f"class{i}" for i in range(CLASSES)],
    }
    images = np.random.default_rng(0).integers(0, 256, (128, 32, 32, 3), dtype=np.uint8)
    cpu = ServedModel(checkpoint, normalization=CIFAR100_NORMALIZATION, device="cpu")
    gpu = ServedModel(checkpoint, normalization=CIFAR100_NORMALIZATION, device="cuda")
    assert next(gpu.model.parameters()).device.type == "cuda"
    with torch.no_grad():  # the served network's input: the images normalized as it normalizes them
        first = cpu.model(cpu.normalizer(torch.from_numpy(images).permute(0, 3, 1, 2))).logits[0]
    threshold = separated_threshold(confidences(first)[0])
    expected, answer = cpu.answer(images, threshold=threshold), gpu.answer(images, threshold=threshold)
    assert len(set(expected["exit_index"])) > 1  # the threshold splits the images between exits
    for column in ("class", "class_name", "exit", "exit_index", "gflops"):
        assert answer[column] == expected[column], column
    np.testing.assert_allclose(answer["confidence"], expected["confidence"], rtol=1e-4, atol=1e-5)
