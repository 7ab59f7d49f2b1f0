"""DVC `rdm` stage: representational dissimilarity matrices of the selected checkpoint."""

from eed.config import load_config
from eed.rdm import run_rdm

if __name__ == "__main__":
    config = load_config("params.yaml")
    out = config.paths.out_dir
    # The samples' seed stays fixed (not `seed`), so every run is compared on the same images.
    run_rdm(f"{out}/train/checkpoints/best.pt", config, f"{out}/rdm", log=config.tracking.enabled)
