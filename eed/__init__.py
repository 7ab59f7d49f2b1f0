"""Exit-Ensemble Distillation: multi-exit CNNs, five training objectives, FFCV data, DVC
stages and MLflow tracking."""

import os

# Idle OpenMP threads sleep instead of spinning. On a few CPU cores shared by torch's
# threads and FFCV's loader threads (or another process), spinning threads starve the
# ones with work: small torch ops ran 5-25x slower. Set before torch is imported; a value
# the user exported wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
