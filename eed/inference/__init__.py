"""The trained network as a deployable early-exit model, in one package:

* :mod:`~eed.inference.early_exit`: inference that really stops at an exit (``predict``,
  ``cascade`` over the network's segments);
* :mod:`~eed.inference.programs`: the segments and prefixes as ``torch.export`` programs;
* :mod:`~eed.inference.served`: :class:`ServedModel`, raw images in, one answer per image out;
* :mod:`~eed.inference.export`: an evaluated checkpoint with its fitted thresholds, logged as the
  ``served`` model of its run (MLflow's side of it is :mod:`eed.tracking.served`).
"""
