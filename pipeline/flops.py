"""DVC `flops` stage: GFLOPs and parameters per output of the configured network."""

from pathlib import Path

from eed.commands.flops_cmd import flops
from eed.config import load_config
from eed.data import load_manifest

if __name__ == "__main__":
    config = load_config("params.yaml")
    flops(config.model.arch, width=config.model.width, num_classes=load_manifest(config).num_classes,
          out=Path(config.paths.out_dir) / "flops")
