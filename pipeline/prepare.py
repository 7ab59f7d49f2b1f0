"""DVC `prepare` stage: FFCV .beton files + manifest.json into data.prepared_dir."""

from eed.config import load_config
from eed.data import prepare

if __name__ == "__main__":
    prepare(load_config("params.yaml"))
