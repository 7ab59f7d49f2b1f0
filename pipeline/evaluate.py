"""DVC `evaluate` stage: every exit, the ensembles, agreement and the early-exit curve of the
selected (best-on-validation) checkpoint, into <out_dir>/evaluate/."""

from eed.config import load_config
from eed.evaluation import run_evaluation

if __name__ == "__main__":
    config = load_config("params.yaml")
    out = config.paths.out_dir
    run_evaluation(f"{out}/train/checkpoints/best.pt", config, f"{out}/evaluate", log=config.tracking.enabled)
