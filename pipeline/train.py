"""DVC `train` stage: train on params.yaml, writing outputs/train/ (see dvc.yaml)."""

import sys

from eed.config import load_config
from eed.train import TrainingInterrupted, relaunch_under_torchrun, train

if __name__ == "__main__":
    config = load_config("params.yaml")
    relaunch_under_torchrun(config.train.nproc, [sys.executable, __file__])
    try:
        train(config, f"{config.paths.out_dir}/train", resume="auto")
    except TrainingInterrupted as interrupted:
        sys.exit(interrupted.exit_code)
