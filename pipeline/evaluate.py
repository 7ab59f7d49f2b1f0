"""DVC `evaluate` stage: `eed evaluate` of the train stage's best.pt (selected on validation):
every exit, the ensembles, agreement and the early-exit curve, into <paths.out_dir>/evaluate."""

from eed.stages import run_stage
from eed.stages.evaluate import evaluate

if __name__ == "__main__":
    run_stage(evaluate)
