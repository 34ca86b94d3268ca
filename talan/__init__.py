"""TALAN: Task-Aligned Latent Adaptation Networks for Hugging Face models.

``talan.patch(model)`` inserts the side-path blocks into a Qwen3/Llama model (or one of the other families in
``talan.hosts.FAMILIES``; plain or wrapped by peft); see SPEC §3 for the contract of every name exported here.
"""

__version__ = "0.1.0"

from .block import TalanBlock  # noqa: E402
from .checkpoint import load_pretrained, save_pretrained  # noqa: E402
from .config import TalanConfig  # noqa: E402
from .fused_lora import disable_fused_lora, enable_fused_lora  # noqa: E402
from .patching import disabled, mark_trainable, patch, talan_parameters, unpatch  # noqa: E402
from .report import parameter_report  # noqa: E402

__all__ = [
    "TalanBlock",
    "TalanConfig",
    "__version__",
    "disable_fused_lora",
    "disabled",
    "enable_fused_lora",
    "load_pretrained",
    "mark_trainable",
    "parameter_report",
    "patch",
    "save_pretrained",
    "talan_parameters",
    "unpatch",
]
