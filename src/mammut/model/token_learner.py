"""TokenLearner: a few learned tokens in place of many (Ryoo et al., NeurIPS 2021, arXiv 2106.11297).

Each of the S output tokens is a weighted sum of the N input tokens, with weights that the input
computes for itself (Sec. 3.1): a spatial attention map per output token, here TokenLearner
V1.1 as scenic's ``token_learner`` writes it:

    maps    = MLP(LayerNorm(x))            (B, N, S): a bottleneck MLP, one logit per output token
    weights = softmax over the N positions (B, S, N)
    tokens  = weights @ x                  (B, S, C)

The tokens are input-adaptive: another image gives other maps. "Learning 8 or 16 tokens in the
middle of the network" keeps a ViT's accuracy at about half its compute (Sec. 4).

Joint Adaptive Representations (Piergiovanni & Angelova, arXiv 2305.19924) fuse image and text
through such reduced tokens, learned again as the text is read ("adaptively and iteratively
fuses the multi-modal features"). For that, a learner may take a ``condition`` (B, D), a summary
of the text, that shifts every position's normalised features before the MLP: the maps then
depend on the image and on the text. The shift starts at zero, so a conditioned learner starts
as the plain one.
"""

from __future__ import annotations

from timm.layers import Mlp
from torch import Tensor, nn


class TokenLearner(nn.Module):
    """(B, N, width) tokens -> (B, num_tokens, width) learned tokens, each a softmax-weighted sum
    of the inputs over the N positions."""

    def __init__(self, width: int, num_tokens: int, bottleneck: int = 64, condition_width: int | None = None):
        super().__init__()
        if num_tokens < 1 or bottleneck < 1:
            raise ValueError(f"a token learner needs num_tokens and bottleneck of at least 1, got {num_tokens}, "
                             f"{bottleneck}")
        self.num_tokens = num_tokens
        self.norm = nn.LayerNorm(width)
        self.maps = Mlp(width, bottleneck, num_tokens, act_layer=nn.GELU)
        # The text's say in where to look: zero at the start, so the maps are the image's alone.
        self.condition = nn.Linear(condition_width, width, bias=False) if condition_width else None
        if self.condition is not None:
            nn.init.zeros_(self.condition.weight)

    def attention(self, tokens: Tensor, condition: Tensor | None = None) -> Tensor:
        """(B, num_tokens, N): each learned token's weights over the input positions, summing to 1."""
        features = self.norm(tokens)
        if self.condition is not None:
            if condition is None:
                raise ValueError("this token learner is conditioned on the text: pass a condition (B, D)")
            features = features + self.condition(condition.to(features.dtype))[:, None]
        elif condition is not None:
            raise ValueError("this token learner takes no condition")
        return self.maps(features).transpose(1, 2).float().softmax(dim=-1)

    def forward(self, tokens: Tensor, condition: Tensor | None = None) -> Tensor:
        weights = self.attention(tokens, condition).to(tokens.dtype)
        return weights @ tokens  # (B, S, N) @ (B, N, C) -> (B, S, C)
