"""TALAN's pieces for any `transformers.Trainer`: its own Trainer subclass (what ``talan train`` runs) and a
mixin that gives the same to another Trainer subclass, such as TRL's ``SFTTrainer``::

    from trl import SFTTrainer
    from talan.trainer import TalanTrainerMixin

    class TalanSFTTrainer(TalanTrainerMixin, SFTTrainer):
        pass

    trainer = TalanSFTTrainer(model=patched_peft_model, args=sft_config, train_dataset=data, talan_lr=1e-3)

What the mixin adds to its Trainer:

- `TalanTrainerMixin.create_optimizer` puts the TALAN parameters in their own param groups with their
  own learning rate (``talan_lr``; SPEC §1 names it as the lever on how fast the side path opens);
- `TalanCheckpointCallback` writes ``talan_config.json`` + ``talan_model.safetensors`` into every
  ``checkpoint-*`` folder, beside the adapter that peft's ``save_pretrained`` writes (peft drops
  TALAN's weights, which are not adapter weights), and ``save_model`` writes them beside the adapter;
- ``train(resume_from_checkpoint=...)`` loads TALAN's weights from the checkpoint before the Trainer
  restores the adapter, optimizer, scheduler and RNG state, so a resumed run ends with the same weights
  as an uninterrupted one.

Under FSDP and ZeRO-3, which shard the parameters, `TalanTrainerMixin.save_talan` gathers the full state
dict on every process (``accelerator.get_state_dict``) and writes TALAN's part of it from the main process.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from . import checkpoint as talan_checkpoint
from .patching import BLOCK_NAME, mark_trainable, talan_blocks, talan_config, talan_parameters

__all__ = ["TALAN_GROUP", "TalanCheckpointCallback", "TalanTrainer", "TalanTrainerMixin",
           "talan_tensors_from_state_dict"]

TALAN_GROUP = "talan"
# inserted into parameter names by FSDP1, activation checkpointing and torch.compile wrappers
_WRAPPER_PARTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def talan_tensors_from_state_dict(model, state_dict: dict) -> dict[str, torch.Tensor]:
    """TALAN's tensors, keyed ``layers.{i}.{param}`` as `talan.save_pretrained` writes them, picked out
    of a full (gathered) ``state_dict`` of ``model`` or of a wrapper around it.

    ``model`` is the unwrapped patched model (it gives the blocks' names); a key of the state dict
    matches a TALAN parameter when, with wrapper parts such as ``_fsdp_wrapped_module.`` taken out,
    it is the parameter's name in ``model`` or ends with ``.`` + that name (a ``module.`` prefix).
    Raises ``KeyError`` for a parameter with no key or several, ``ValueError`` for a tensor whose
    shape is not the full one (a shard).
    """
    clean = {}
    for key, value in state_dict.items():
        for part in _WRAPPER_PARTS:
            key = key.replace(part, "")
        clean[key] = value
    module_names = {id(module): name for name, module in model.named_modules()}
    config, host = talan_config(model), talan_checkpoint._host(model)
    blocks = talan_blocks(model)
    expected = talan_checkpoint._expected_shapes(config, host["hidden_size"], tuple(blocks))
    tensors = {}
    for i, block in blocks.items():
        for name, _ in block.named_parameters():
            full = f"{module_names[id(block)]}.{name}"
            hits = [k for k in clean if k == full or k.endswith(f".{full}")]
            if len(hits) != 1:
                raise KeyError(f"TALAN parameter {full}: {'no key' if not hits else f'several keys {hits}'} "
                               "in the gathered state dict")
            tensor = clean[hits[0]].detach().to("cpu").contiguous()
            key = f"layers.{i}.{name}"
            if tuple(tensor.shape) != expected[key]:
                raise ValueError(f"TALAN parameter {full} has shape {tuple(tensor.shape)} in the gathered state "
                                 f"dict, not the full {expected[key]}: a shard, not a gathered tensor")
            tensors[key] = tensor
    return tensors


class TalanCheckpointCallback(TrainerCallback):
    """Writes TALAN's two files into each ``checkpoint-*`` folder that the Trainer has just saved.

    With ``trainer`` (as `TalanTrainerMixin` registers it) the files are written by its ``save_talan``,
    which gathers sharded (FSDP, DeepSpeed ZeRO-3) parameters first; ``on_save`` runs on every process,
    so each takes part in the gather.
    """

    def __init__(self, trainer: TalanTrainerMixin | None = None):
        self.trainer = trainer

    def on_save(self, args, state, control, model=None, **kwargs):
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if self.trainer is not None:
            self.trainer.save_talan(folder)
        elif args.should_save:
            talan_checkpoint.save_pretrained(model, folder)
        return control


class TalanTrainerMixin:
    """TALAN's additions to a `transformers.Trainer` subclass: put it first among the bases
    (``class T(TalanTrainerMixin, SFTTrainer)``), its model a peft model patched with TALAN.

    ``talan_lr`` (a keyword of the constructor; default: ``args.learning_rate``) is the learning rate of
    the TALAN parameters, which get param groups of their own (named ``"talan"``); checkpoints and
    ``save_model`` hold TALAN's files, and resuming restores them.
    """

    def __init__(self, *args, talan_lr: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        # A patched base handed over with a peft config (SFTTrainer's peft_config=) was wrapped by
        # get_peft_model just now, which froze TALAN like every non-adapter weight: turn its scope back on.
        # (Also the check that the model is patched at all, before any training.)
        mark_trainable(self.model)
        self.talan_lr = talan_lr
        self.add_callback(TalanCheckpointCallback(self))

    def get_decay_parameter_names(self, model) -> list[str]:
        # Trainer exempts norms by module type or name; TALAN's RMSNorm weight is a raw parameter
        return [n for n in super().get_decay_parameter_names(model) if not n.endswith(f".{BLOCK_NAME}.norm_weight")]

    def create_optimizer(self, *args, **kwargs):
        """Trainer's optimizer (its class, kwargs and decay groups), with the TALAN parameters moved
        to groups of their own at ``talan_lr``. Only regroups before the first step, so no state moves.
        (transformers 5 passes the model; 4.x passes nothing.)"""
        if self.optimizer is not None:
            return self.optimizer
        optimizer = super().create_optimizer(*args, **kwargs)
        talan_ids = {id(p) for p in talan_parameters(self._talan_model())}
        groups, talan_groups = [], []
        for group in optimizer.param_groups:
            own = [p for p in group["params"] if id(p) in talan_ids]
            rest = [p for p in group["params"] if id(p) not in talan_ids]
            if rest:
                groups.append({**group, "params": rest, "name": group.get("name", "adapter")})
            if own:
                lr = group["lr"] if self.talan_lr is None else self.talan_lr
                talan_groups.append({**group, "params": own, "lr": lr, "name": TALAN_GROUP})
        if any(optimizer.state.values()):
            raise RuntimeError("the optimizer already holds state; TALAN's param groups must be split before training")
        optimizer.param_groups = groups + talan_groups
        return optimizer

    def _talan_model(self):
        """The patched peft model (under FSDP1 ``self.model`` is the FSDP wrapper once training starts)."""
        return self.accelerator.unwrap_model(self.model)

    @property
    def _talan_sharded(self) -> bool:
        return bool(self.is_fsdp_enabled or self.is_deepspeed_enabled)

    def save_talan(self, folder: str | os.PathLike) -> None:
        """Write TALAN's two files into ``folder``. Call it on every process: under FSDP and DeepSpeed the
        full state dict is gathered (a collective), then the main process writes TALAN's part of it."""
        model = self._talan_model()
        if self._talan_sharded:
            state_dict = self.accelerator.get_state_dict(self.model_wrapped)  # every process takes part
            if self.args.should_save and self.accelerator.is_main_process:  # FSDP gathers onto rank 0 only
                tensors = talan_tensors_from_state_dict(model, state_dict)
                talan_checkpoint._write_checkpoint(folder, talan_config(model), tensors,
                                                   talan_checkpoint._host(model))
        elif self.args.should_save:
            talan_checkpoint.save_pretrained(model, folder)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """The Trainer's save (the adapter, through peft), then TALAN's files beside it. Call it on every
        process, as the Trainer asks under FSDP and DeepSpeed."""
        super().save_model(output_dir, _internal_call)
        if not _internal_call:  # a checkpoint's TALAN files come from TalanCheckpointCallback (on_save)
            self.save_talan(output_dir if output_dir is not None else self.args.output_dir)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"no checkpoint-* folder to resume from in {self.args.output_dir}")
        if resume_from_checkpoint:
            # before the Trainer wraps (and FSDP/ZeRO-3 shard) the model, on every rank: each loads the full
            # tensors, which the wrapper then shards
            talan_checkpoint.load_pretrained(self.model, resume_from_checkpoint)
        return super().train(resume_from_checkpoint=resume_from_checkpoint or None, **kwargs)


class TalanTrainer(TalanTrainerMixin, Trainer):
    """`transformers.Trainer` for a peft model patched with TALAN (see `TalanTrainerMixin`)."""
