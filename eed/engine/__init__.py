"""The training engine, in the layout of torchvision's classification references.

``setup`` (``build_training``: the one place a training set-up is built) · ``checkpoint`` (the
typed :class:`~eed.engine.checkpoint.Checkpoint`, the resume policy) · ``trainer`` (the phases
of a run, callbacks) · ``loops`` (``train_one_epoch`` and ``collect_outputs`` side by side) ·
``epochs`` (an epoch's metrics and console line) · ``run_record`` (what a run records in the
store besides its metrics) · ``runtime`` (device, precision, DDP, seeding, RNG state) ·
``optim`` (optimizer and schedule) · ``signals`` (SIGTERM/SIGINT as a flag). Import the
submodules; this package imports nothing.
"""
