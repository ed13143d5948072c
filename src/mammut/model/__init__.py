"""Plain PyTorch modules of MaMMUT; nothing here knows about Lightning or data files."""

from .config import PRESETS, MammutConfig, preset
from .generation import GenerationConfig, generate, generate_after_prompts
from .losses import ContrastiveLoss, caption_loss, chunked_caption_loss
from .mammut import Mammut, MammutOutput
from .prefix import PrefixConfig, VisualPrefix

__all__ = [
    "PRESETS", "MammutConfig", "preset", "Mammut", "MammutOutput",
    "ContrastiveLoss", "caption_loss", "chunked_caption_loss", "GenerationConfig", "generate", "generate_after_prompts",
    "PrefixConfig", "VisualPrefix",
]
