"""DVC `train` stage: `eed train` on params.yaml, into <paths.out_dir>/train (see dvc.yaml).
With train.nproc > 1, torchrun re-runs this script as that many processes."""

from eed.stages import run_stage
from eed.stages.train import train

if __name__ == "__main__":
    run_stage(train)
