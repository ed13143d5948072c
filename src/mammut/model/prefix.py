"""Parameter-efficient adaptation after eP-ALM (Shukor et al., arXiv 2303.11403).

eP-ALM freezes the image encoder and the language model and trains less than 1% of the
weights: one linear connector that maps the [CLS] tokens of the encoder's last layers into
the language model's width, and a soft prompt prepended to the text.

Here the pooled token of each chosen encoder layer goes through one shared linear
projection, and the results follow the learned prompt tokens in front of the decoder's
input. eP-ALM injects each layer's token into a different later layer of its language
model; the MaMMUT decoder is shallow and already cross-attends to the image, so all of
them enter at the input. Frozen weights and the prefix being the only trainable part is a
config matter: ``freeze: ["model.*"]`` in configs/finetune_vqa_peft.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass
class PrefixConfig:
    prompt_tokens: int = 8  # learned soft-prompt embeddings
    visual_layers: list[int] = field(default_factory=lambda: [-1])  # encoder blocks whose pooled token is injected


class VisualPrefix(nn.Module):
    """(B, len(visual_layers), vision_width) pooled visual tokens -> (B, P + L, text_width) prefix."""

    def __init__(self, config: PrefixConfig, vision_width: int, text_width: int):
        super().__init__()
        if config.prompt_tokens < 0:
            raise ValueError(f"prompt_tokens must be >= 0, got {config.prompt_tokens}")
        self.config = config
        self.projection = nn.Linear(vision_width, text_width)
        self.prompt = nn.Parameter(torch.randn(config.prompt_tokens, text_width) * 0.02)

    def forward(self, layer_tokens: Tensor) -> Tensor:
        visual = self.projection(layer_tokens)
        prompt = self.prompt.to(visual.dtype).expand(visual.shape[0], -1, -1)
        return torch.cat([prompt, visual], dim=1)
