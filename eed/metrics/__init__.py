"""Pure maths on tensors: accuracy, top-k, ECE and agreement (``classification``), the
early-exit rule and its costs (``anytime``), FLOPs per output (``flops``), RDMs (``rdm``),
and the report of one split (``summary``). Nothing here reads files or talks to MLflow.
"""

from __future__ import annotations

import math
from typing import Any


def round_floats(value: Any, digits: int = 8) -> Any:
    """Floats rounded to ``digits`` significant digits, recursively: 0.15000000000000002 -> 0.15
    in metrics files, far below any difference that matters."""
    if isinstance(value, dict):
        return {key: round_floats(item, digits) for key, item in value.items()}
    if isinstance(value, list):
        return [round_floats(item, digits) for item in value]
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.{digits}g}")
    return value
