"""The training engine, in the layout of torchvision's classification references.

``runtime`` (device, precision, DDP, seeding, RNG state) · ``optim`` (optimizer and
schedule) · ``loops`` (``train_one_epoch`` and ``collect_outputs`` side by side) ·
``early_exit`` (inference that really stops at an exit) · ``signals`` (SIGTERM/SIGINT as a
flag) · ``checkpoint`` (the one checkpoint dict, resume policy, source resolution) ·
``trainer`` (orchestration only). Import the submodules; this package imports nothing.
"""
