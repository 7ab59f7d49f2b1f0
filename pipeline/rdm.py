"""DVC `rdm` stage: `eed rdm` of the train stage's best.pt, into <paths.out_dir>/rdm."""

from eed.stages import run_stage
from eed.stages.rdm import rdm

if __name__ == "__main__":
    run_stage(rdm)
