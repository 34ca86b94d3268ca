"""Triton kernels for TALAN and fused LoRA, each with a plain PyTorch reference.

Never imports transformers, peft or talan; nothing touches a GPU at import time.
"""

__version__ = "0.1.0"
