"""DVC `prepare` stage: `eed prepare` on params.yaml (FFCV .beton files + manifest.json)."""

from eed.stages import run_stage
from eed.stages.prepare import prepare

if __name__ == "__main__":
    run_stage(prepare)
