"""Training callbacks: sample grids, FID/IS, preemption, atomic checkpoint I/O."""

from ddpm.callbacks.checkpoint_io import AtomicCheckpointIO, SaveLastAtEnd, StepCheckpoint
from ddpm.callbacks.debug import EMAHash
from ddpm.callbacks.preemption import Preemption
from ddpm.callbacks.sample_grid import SampleGrid

__all__ = ["AtomicCheckpointIO", "EMAHash", "Preemption", "SampleGrid", "SaveLastAtEnd", "StepCheckpoint"]
