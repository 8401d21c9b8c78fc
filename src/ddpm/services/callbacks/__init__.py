"""Training callbacks: sample grids, FID/IS, preemption, atomic checkpoint I/O."""

from ddpm.services.callbacks.checkpoint_io import AtomicCheckpointIO, SaveLastAtEnd, StepCheckpoint
from ddpm.services.callbacks.debug import EMAHash
from ddpm.services.callbacks.preemption import Preemption
from ddpm.services.callbacks.sample_grid import SampleGrid

__all__ = ["AtomicCheckpointIO", "EMAHash", "Preemption", "SampleGrid", "SaveLastAtEnd", "StepCheckpoint"]
