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
    # Every Segment shares one forward (and every network one forward_main), so dynamo counts the graphs of
    # every runner compiled in this process against one code object's recompile limit; past it, it would run
    # the rest eagerly, silently. Each runner raises the limits by what it needs (two graphs per piece: batch 1
    # and dynamic, doubled for slack), and its warm-up fails loudly if a limit is hit all the same.
    needed = 4 * (len(pieces) + 1)
    torch._dynamo.config.recompile_limit += needed
    torch._dynamo.config.accumulated_recompile_limit += needed
    runner = Runner(
        [torch.compile(piece, dynamic=True) for piece in pieces], torch.compile(model.forward_main, dynamic=True)
    )
    parameter = next(model.parameters())
    with torch.inference_mode(), torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        # (inference mode as predict runs them: a graph is compiled for one grad mode)
        for batch in WARM_UP_BATCHES:
            images = torch.zeros(batch, 3, image_size, image_size, device=parameter.device, dtype=parameter.dtype)
            hidden = images
            for piece in runner.segments:
                hidden, _ = piece(hidden)
            runner.main(images)
    return runner
