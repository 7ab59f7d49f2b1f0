"""The cascade's pieces compiled with ``torch.compile``: the same early exit, fewer Python and
kernel calls per segment (batch-norm folded, element-wise work fused).

:func:`compiled_runner` compiles each segment of :func:`eed.inference.early_exit.segments` and
the main output alone, with a dynamic batch dimension (the batch shrinks as samples leave), and
runs each once at batch 1 and 2 so that the compilation happens at load time, not on the first
request. :func:`eed.inference.early_exit.predict` takes the result as its ``runner``; the answers
are the eager ones (``tests/test_compiled.py``).
"""

from __future__ import annotations

import torch
import torch._dynamo

from eed.inference.early_exit import Runner, segments
from eed.models.multi_exit import MultiExitNet

# Batch sizes run at load time: 1 (dynamo specializes a size-1 dimension) and 2 (the dynamic graph
# that serves every larger batch).
WARM_UP_BATCHES = (1, 2)


def compiled_runner(model: MultiExitNet, image_size: int) -> Runner:
    """``model``'s segments and main output, compiled (eval mode) and run once at each
    :data:`WARM_UP_BATCHES` size on ``image_size`` images of the model's device."""
    model.eval()
    pieces = segments(model)
    # Every Segment shares one forward, so dynamo counts each instance (and batch-size class) against
    # one code object's recompile limit; past it, it would silently run the rest eagerly.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 4 * (len(pieces) + 1))
    runner = Runner([torch.compile(piece, dynamic=True) for piece in pieces],
                    torch.compile(model.forward_main, dynamic=True))
    parameter = next(model.parameters())
    with torch.inference_mode():  # as predict runs them: a graph is compiled for one grad mode
        for batch in WARM_UP_BATCHES:
            images = torch.zeros(batch, 3, image_size, image_size, device=parameter.device, dtype=parameter.dtype)
            hidden = images
            for piece in runner.segments:
                hidden, _ = piece(hidden)
            runner.main(images)
    return runner
