"""DVC `flops` stage: `eed flops` of the configured network with the prepared dataset's
classes, into <paths.out_dir>/flops."""

from eed.stages import run_stage
from eed.stages.flops import flops_stage

if __name__ == "__main__":
    run_stage(flops_stage)
