"""Phased training of the student (LAB): tokenize + mask, pack, chunked loss, loop, checkpoints.

Library API: `labalign.train.launch.launch(TrainConfig(...), nproc) -> TrainResult` (one process, or N
started by torch.distributed.run); `labalign.train.phases.train` is the work of one process. The
`labalign train` command and `labalign run` both call `launch`. This package's `__init__` imports
nothing, so that reading a training log does not load torch.
"""
