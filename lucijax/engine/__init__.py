"""The engine: the one loop over a cube (see :mod:`lucijax.engine.core`)."""

from lucijax.engine.checkpoint import BlockCheckpoint, CheckpointBusyError
from lucijax.engine.core import (
    BatchRunner,
    Execution,
    PixelMap,
    default_batch_size,
    fingerprint,
    local_devices,
    map_pixels,
    map_rows,
    run_block,
)

__all__ = ["Execution", "PixelMap", "map_pixels", "map_rows", "run_block", "BatchRunner", "BlockCheckpoint", "CheckpointBusyError",
           "fingerprint", "default_batch_size", "local_devices"]
