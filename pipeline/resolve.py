"""DVC `resolve` stage: `eed resolve`, the values params.yaml's null keys take under the
preset, into <paths.out_dir>/resolved.yaml (which the later stages list as params)."""

from eed.stages import run_stage
from eed.stages.resolve import resolve

if __name__ == "__main__":
    run_stage(resolve)
