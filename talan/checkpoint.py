"""`save_pretrained` / `load_pretrained`: two files that can sit beside a peft adapter (SPEC §3).

``talan_config.json`` holds every config field, the talan version and the host's hidden size and
layer count; ``talan_model.safetensors`` holds the tensors as ``layers.{i}.{param}``. And
`load_local_checkpoint`: the host model and tokenizer from a local Hugging Face folder, never the network.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .block import TalanBlock
from .config import CONFIG_NAME, TalanConfig
from .hosts import decoder_layers, decoder_stack
from .patching import is_patched, patch, talan_blocks, talan_config

WEIGHTS_NAME = "talan_model.safetensors"


def save_pretrained(model: nn.Module, path: str | os.PathLike) -> None:
    """Write ``talan_config.json`` and ``talan_model.safetensors`` into the folder ``path``."""
    tensors = {f"layers.{i}.{name}": p.detach().to("cpu").contiguous()
               for i, block in talan_blocks(model).items() for name, p in block.named_parameters()}
    _write_checkpoint(path, talan_config(model), tensors, _host(model))


def _host(model: nn.Module) -> dict:
    stack = decoder_stack(model)
    return {"hidden_size": stack.config.hidden_size, "num_layers": len(decoder_layers(stack))}


def _write_checkpoint(path: str | os.PathLike, config: TalanConfig, tensors: dict[str, torch.Tensor],
                      host: dict) -> None:
    """The writer of `save_pretrained`: ``tensors`` keyed ``layers.{i}.{param}``, ``host`` as `_host` gives it."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    (folder / CONFIG_NAME).write_text(config.to_json(**host) + "\n")


def _read_checkpoint(folder: Path) -> tuple[TalanConfig, dict, dict[str, torch.Tensor]]:
    if not folder.is_dir():
        raise FileNotFoundError(f"no TALAN checkpoint folder at {folder}")
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for required in (config_path, weights_path):
        if not required.is_file():
            raise FileNotFoundError(f"TALAN checkpoint file missing: {required}")
    try:
        raw = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_path} is not valid JSON: {err}") from err
    if not isinstance(raw, dict):
        raise ValueError(f"{config_path} must hold a JSON object")
    host = {key: raw.get(key) for key in ("hidden_size", "num_layers")}
    config = TalanConfig.from_dict(raw)
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{weights_path} is not a readable safetensors file: {err}") from err
    return config, host, tensors


def _expected_shapes(config: TalanConfig, hidden_size: int, layers: tuple[int, ...]) -> dict[str, tuple]:
    with torch.device("meta"):
        block = TalanBlock(hidden_size, config)
    return {f"layers.{i}.{name}": tuple(p.shape) for i in layers for name, p in block.named_parameters()}


def _same_block(a: TalanConfig, b: TalanConfig) -> bool:
    """Configs that build the same blocks in the same places (the backend is a runtime choice)."""
    da, db = a.to_dict(), b.to_dict()
    for d in (da, db):
        d.pop("backend")
        d.pop("talan_version")
    return da == db


def load_pretrained(model: nn.Module, path: str | os.PathLike, backend: str | None = None) -> nn.Module:
    """Patch ``model`` with the saved config if it is not patched yet, then load the saved weights.

    Everything is checked before the model is touched: a missing folder or file raises
    ``FileNotFoundError``; a config, host size or tensor that does not match raises ``ValueError``.
    ``backend`` overrides the saved backend (e.g. ``"torch"`` on a CPU-only machine).
    """
    config, host, tensors = _read_checkpoint(Path(path))
    if backend is not None:
        config = TalanConfig.from_dict({**config.to_dict(), "backend": backend})
    stack = decoder_stack(model)
    hidden_size, num_layers = stack.config.hidden_size, len(decoder_layers(stack))
    if host["hidden_size"] != hidden_size or host["num_layers"] != num_layers:
        raise ValueError(f"checkpoint was saved for hidden_size={host['hidden_size']}, "
                         f"num_layers={host['num_layers']}; "
                         f"this model has hidden_size={hidden_size}, num_layers={num_layers}")
    if is_patched(model) and not _same_block(talan_config(model), config):
        raise ValueError("model is patched with a different TALAN config than the checkpoint's: "
                         f"{talan_config(model)} vs {config}")
    expected = _expected_shapes(config, hidden_size, config.resolve_layers(num_layers))
    got = {key: tuple(t.shape) for key, t in tensors.items()}
    if got != expected:
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        wrong = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])
        raise ValueError(f"checkpoint tensors do not match the config: missing {missing[:5]}, unexpected {extra[:5]}, "
                         f"wrong shape {[(k, got[k], expected[k]) for k in wrong[:5]]}")
    if not is_patched(model):
        patch(model, config)
    with torch.no_grad():
        for i, block in talan_blocks(model).items():
            for name, p in block.named_parameters():
                p.copy_(tensors[f"layers.{i}.{name}"])
    return model


def load_local_checkpoint(path, flag: str = "--model", dtype=None, quantization_config=None):
    """A local Hugging Face checkpoint folder and its tokenizer, never from the network; the weights in
    ``dtype`` (default fp32), quantised as they load when a transformers ``quantization_config`` is given.

    Raises ``FileNotFoundError`` for a missing folder or one without ``config.json`` and
    ``ValueError`` for a tokenizer without an eos token (it ends every completion); ``flag`` names
    the command-line option in the messages.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{flag} {folder}: no such directory. Pass a local Hugging Face checkpoint folder "
                                "(config.json, weights and tokenizer files); talan never downloads.")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{flag} {folder}: no config.json in that folder, so it is not a Hugging Face "
                                "checkpoint")
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"{flag} {folder}: the tokenizer has no eos token, which ends every completion")
    # only when given: an explicit None makes transformers load a checkpoint saved quantised as unquantised
    quantization = {} if quantization_config is None else {"quantization_config": quantization_config}
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=dtype or torch.float32,
                                                 **quantization)
    return model, tokenizer
