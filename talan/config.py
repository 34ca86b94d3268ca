"""`TalanConfig`: the six axes of the block (SPEC §1) plus the backend, validated on creation."""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path

from talan_kernels.side_path import MIXERS, WRITEBACKS
from talan_kernels.side_path.interface import kernel_size_problem

SITES = ("pre", "mid", "post")
TRAINABLE_SCOPES = ("joint", "freeze_compressor", "writeback_only")
BACKENDS = ("auto", "torch", "triton")
CONFIG_NAME = "talan_config.json"


def _check_layer_item(value) -> None:
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, numbers.Real)):
        raise ValueError(f"layer must be an int index, a float in [0, 1] or a tuple of these; got {value!r}")
    if not isinstance(value, numbers.Integral) and not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"layer as a float is a fraction of the depth and must lie in [0, 1]; got {value!r}")


@dataclass
class TalanConfig:
    """Configuration of the TALAN blocks that `talan.patch` inserts.

    The six axes: insertion location (`layer`, `site`), memory size (`num_slots`, `latent_dim`),
    `mixer`, `writeback`, trainability scope (`trainable`) and `grad_scale`. `backend` chooses the
    implementation. Every field has a default; invalid values raise `ValueError` naming the field.
    """

    layer: int | float | tuple = field(default=0.5, metadata={
        "help": "Decoder layer(s): int index (negative from the end), float f in [0, 1] meaning "
                "round(f * (L - 1)), or a tuple of these for several blocks."})
    site: str = field(default="mid", metadata={
        "help": "pre: layer input; mid: after the attention residual add; post: layer output."})
    num_slots: int = field(default=16, metadata={"help": "M, the number of latent memory slots."})
    latent_dim: int = field(default=64, metadata={"help": "r, the latent width."})
    mixer: str = field(default="attn", metadata={"help": f"How memory is remixed per token: {MIXERS}."})
    writeback: str = field(default="tanh_gate", metadata={"help": f"Controlled residual update: {WRITEBACKS}."})
    trainable: str = field(default="joint", metadata={"help": f"Which TALAN parameters train: {TRAINABLE_SCOPES}."})
    grad_scale: float = field(default=1.0, metadata={
        "help": "Scale of the gradient that flows from the side path back into the backbone (0 = stop)."})
    backend: str = field(default="auto", metadata={
        "help": "torch (reference), triton (kernels), auto (kernels on CUDA tensors, torch otherwise)."})
    score_cap: float = field(default=15.0, metadata={"help": "Soft-cap of the slot scores."})
    gate_per_channel: bool = field(default=True, metadata={"help": "tanh_gate: one gamma per channel (else a scalar)."})
    zero_add_scale: float = field(default=1.0, metadata={"help": "zero_add: the fixed scale lam."})
    norm_cap_ratio: float = field(default=1e-2, metadata={"help": "norm_cap: rho, max ||u|| over ||h||."})
    token_gate_bias: float = field(default=-4.0, metadata={"help": "token_gate: the gate bias at initialisation."})

    def __post_init__(self):
        if isinstance(self.layer, list):
            self.layer = tuple(self.layer)
        items = self.layer if isinstance(self.layer, tuple) else (self.layer,)
        if not items:
            raise ValueError("layer must name at least one layer; got an empty tuple")
        for item in items:
            _check_layer_item(item)
        for name, allowed in (("site", SITES), ("mixer", MIXERS), ("writeback", WRITEBACKS),
                              ("trainable", TRAINABLE_SCOPES), ("backend", BACKENDS)):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}; got {value!r}")
        for name in ("num_slots", "latent_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name} must be a positive int; got {value!r}")
        problem = kernel_size_problem(self.latent_dim)
        if self.backend == "triton" and problem:  # fail at the config, not at the first forward
            raise ValueError(f"backend='triton': {problem}")
        for name, low, strict in (("grad_scale", 0.0, False), ("score_cap", 0.0, True),
                                  ("zero_add_scale", 0.0, False), ("norm_cap_ratio", 0.0, True)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
                    or value < low or (strict and value == low):
                bound = f"> {low}" if strict else f">= {low}"
                raise ValueError(f"{name} must be a finite number {bound}; got {value!r}")
        bias = self.token_gate_bias  # any finite number: a NaN or infinite bias makes every gate NaN or saturated
        if isinstance(bias, bool) or not isinstance(bias, numbers.Real) or not math.isfinite(bias):
            raise ValueError(f"token_gate_bias must be a finite number; got {bias!r}")
        if not isinstance(self.gate_per_channel, bool):
            raise ValueError(f"gate_per_channel must be a bool; got {self.gate_per_channel!r}")

    def resolve_layers(self, num_layers: int) -> tuple[int, ...]:
        """The decoder-layer indices, in [0, num_layers), that get a block (sorted, distinct)."""
        items = self.layer if isinstance(self.layer, tuple) else (self.layer,)
        resolved = []
        for item in items:
            if isinstance(item, numbers.Integral):
                index = int(item) + num_layers if item < 0 else int(item)
                if not 0 <= index < num_layers:
                    raise ValueError(f"layer {item} is out of range for a model with {num_layers} layers")
            else:
                index = round(float(item) * (num_layers - 1))
            if index in resolved:
                raise ValueError(f"layer names decoder layer {index} twice in {self.layer!r}")
            resolved.append(index)
        return tuple(sorted(resolved))

    def to_dict(self) -> dict:
        from talan import __version__

        data = dataclasses.asdict(self)
        if isinstance(self.layer, tuple):
            data["layer"] = list(self.layer)
        data["talan_version"] = __version__
        return data

    @classmethod
    def from_dict(cls, data: dict) -> TalanConfig:
        data = {k: v for k, v in data.items() if k not in ("talan_version", "hidden_size", "num_layers")}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TalanConfig field(s): {', '.join(unknown)}")
        return cls(**data)

    def to_json(self, **extra) -> str:
        return json.dumps({**self.to_dict(), **extra}, indent=2, sort_keys=True)

    @classmethod
    def from_json_file(cls, path: str | Path) -> TalanConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))
