"""peft LoRA/DoRA layers for the fused-LoRA tests, and the fused op called with their weights."""

from collections import OrderedDict

import peft
import torch
from torch import nn

from talan_kernels.lora import dora_linear, lora_linear


def make_peft_layer(K, N, r, *, bias=True, dora=False, rslora=False, alpha=None, dtype=None, device=None, seed=0):
    """A peft lora.Linear around nn.Linear(K, N) (alpha defaults to 2r) with random, non-zero A and
    B and, for DoRA, a magnitude moved away from the weight norm so the column scale is not 1."""
    torch.manual_seed(seed)
    base = nn.Sequential(OrderedDict(lin=nn.Linear(K, N, bias=bias)))
    cfg = peft.LoraConfig(r=r, lora_alpha=2 * r if alpha is None else alpha, target_modules=["lin"], use_dora=dora,
                          use_rslora=rslora, init_lora_weights=False)
    layer = peft.get_peft_model(base, cfg).base_model.model.lin.to(device=device, dtype=dtype)
    if dora:
        with torch.no_grad():
            mag = layer.lora_magnitude_vector["default"].weight
            mag.mul_(0.5 + torch.rand_like(mag))
    return layer


def layer_params(layer):
    """The adapter's trainable tensors: A, B and (DoRA) the magnitude."""
    p = [layer.lora_A["default"].weight, layer.lora_B["default"].weight]
    if layer.lora_magnitude_vector:
        p.append(layer.lora_magnitude_vector["default"].weight)
    return p


def run_fused(layer, x, backend):
    """The fused op on the peft layer's own weights."""
    base = layer.get_base_layer()
    A, B, s = layer.lora_A["default"].weight, layer.lora_B["default"].weight, layer.scaling["default"]
    if layer.lora_magnitude_vector:
        m = layer.lora_magnitude_vector["default"].weight
        return dora_linear(x, base.weight, A, B, m, s, base.bias, backend=backend)
    return lora_linear(x, base.weight, A, B, s, base.bias, backend=backend)
