"""The TALAN side path: causal slot memory, mixer and writeback (SPEC §1, §4.1)."""

from .interface import side_path
from .reference import (
    MIXERS,
    WRITEBACKS,
    scale_grad,
    side_path_ref,
    slot_memory_oracle,
    slot_memory_ref,
)

__all__ = ["side_path", "MIXERS", "WRITEBACKS", "scale_grad", "side_path_ref", "slot_memory_oracle", "slot_memory_ref"]
