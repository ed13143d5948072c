"""Plain PyTorch modules of MaMMUT; nothing here knows about Lightning or data files."""

from .config import PRESETS, MammutConfig, preset
from .generation import GenerationConfig, generate
from .losses import ContrastiveLoss, caption_loss
from .mammut import Mammut, MammutOutput

__all__ = [
    "PRESETS", "MammutConfig", "preset", "Mammut", "MammutOutput",
    "ContrastiveLoss", "caption_loss", "GenerationConfig", "generate",
]
