"""MaMMUT: a simple architecture for joint learning for multimodal tasks (arXiv 2303.16839).

One image encoder and one text decoder. The decoder runs twice per image-text pair
(Sec. 3.2): a contrastive pass without the image gives the text embedding, and a generative
pass with cross-attention to the visual tokens predicts the caption.

Compact token fusion (``model/token_learner.py``, ``MammutConfig.fusion_*``) may replace the visual
tokens by a few learned ones inside the encoder or before the decoder's cross-attention; the
contrastive pass and the image embedding never depend on the text either way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import MammutConfig
from .losses import chunked_caption_loss
from .text_decoder import TextDecoder
from .token_use import TokenUse
from .vision import VisionEncoder


@dataclass
class MammutOutput:
    image_embedding: Tensor  # (B, E), unit norm
    text_embedding: Tensor   # (B, E), unit norm
    # (B, T-1, V): predicts tokens[:, 1:] from tokens[:, :-1]; None when the forward was asked for
    # the hidden states alone (``caption_hidden``), which a chunked loss turns into logits piece by piece.
    caption_logits: Tensor | None
    logit_scale: Tensor      # scalar: 1 / temperature
    caption_hidden: Tensor | None = None  # (B, T-1, text_width): the final hidden states, before lm_head


class Mammut(nn.Module):
    # Names of parameters that loading weights must know (``weights.load_mammut_weights``).
    POSITION_EMBEDDING = "vision.vit.pos_embed"  # resampled when weights come from another image size
    TEXT_POSITION_EMBEDDING = "decoder.position_embedding"  # fitted when weights come from another context length
    TUBES = "vision.tubes."  # the video tubes, which start from the patch embedding when a file lacks them
    # The video path, which image-text weights do not hold: tubes and mPLUG-2's video-only blocks.
    VIDEO_PATH = (TUBES, "vision.video_blocks.")
    TOKEN_USE = "token_use.counts"  # not a weight: files written before it was kept lack it

    def __init__(self, config: MammutConfig):
        super().__init__()
        self.config = config
        self.vision = VisionEncoder(config)
        self.decoder = TextDecoder(config)
        self.image_projection = nn.Linear(config.vision_width, config.embed_dim, bias=False)
        self.text_projection = nn.Linear(config.text_width, config.embed_dim, bias=False) if config.text_projection \
            else None
        nn.init.normal_(self.image_projection.weight, std=config.vision_width ** -0.5)
        if self.text_projection is not None:
            nn.init.normal_(self.text_projection.weight, std=config.text_width ** -0.5)
        # Learnable temperature, stored as log(1 / tau) as in CLIP. Shape (1,), not (): neither
        # FSDP1 nor FSDP2 can shard a 0-dim parameter.
        self.logit_scale = nn.Parameter(torch.full((1,), math.log(1.0 / config.init_temperature)))
        self.token_use = TokenUse(config.vocab_size)  # which vocabulary rows training met

    def encode_image(self, images: Tensor) -> Tensor:
        """Visual tokens (B, N, vision_width); N = class token + fusion_tokens with a token learner
        in the encoder."""
        return self.vision(images)

    def encode_patches(self, images: Tensor) -> Tensor:
        """Visual tokens with one token per patch (B, prefix + H/p * W/p, vision_width), for
        per-token heads (detection): every block runs over every patch, past any token learner
        of the encoder (which only the image embedding and the decoder read)."""
        return self.vision(images, learned_tokens=False)

    def encode_image_with_layers(self, images: Tensor, layers: list[int]) -> tuple[Tensor, Tensor]:
        """Visual tokens, and the pooled token of each block in ``layers`` (B, len(layers),
        vision_width): what the eP-ALM prefix reads (see ``VisionEncoder.forward_with_layers``)."""
        return self.vision.forward_with_layers(images, layers)

    def image_embedding(self, visual_tokens: Tensor) -> Tensor:
        return F.normalize(self.image_projection(self.vision.pool(visual_tokens)), dim=-1)

    def project_tokens(self, tokens: Tensor) -> Tensor:
        """Each token (B, N, vision_width) through the contrastive image projection, unnormalised:
        visual tokens in the space of the text embeddings, which a detector scores them in."""
        return self.image_projection(tokens)

    def text_embedding(self, tokens: Tensor) -> Tensor:
        """Contrastive pass (Sec. 3.2): the image is never seen."""
        hidden = self.decoder.contrastive(tokens)  # (B, T, C)
        not_pad = tokens != self.config.pad_id
        if self.config.text_pooling == "eos":
            # The end-of-text token is the last non-padding one.
            last = not_pad.sum(dim=1) - 1
            pooled = hidden[torch.arange(tokens.shape[0], device=tokens.device), last]
        elif self.config.text_pooling == "mean":
            weights = not_pad.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
        else:  # "mean_all": openMaMMUT's, padding included
            pooled = hidden.mean(dim=1)
        if self.text_projection is not None:
            pooled = self.text_projection(pooled)
        return F.normalize(pooled, dim=-1)

    def caption_logits(self, tokens: Tensor, visual_tokens: Tensor, prefix: Tensor | None = None,
                       prompt_lengths: Tensor | None = None) -> Tensor:
        """Generative pass (Sec. 3.2): causal, cross-attending to the visual tokens. ``prompt_lengths``
        (B,): leading tokens that text-conditioned fusion reads (default: the begin-of-text token)."""
        return self.decoder.generative(tokens, visual_tokens, prefix, prompt_lengths=prompt_lengths)

    def caption_hidden(self, tokens: Tensor, visual_tokens: Tensor, prefix: Tensor | None = None,
                       prompt_lengths: Tensor | None = None) -> Tensor:
        """``caption_logits`` before ``decoder.lm_head``: (B, T, text_width), for a loss that never
        builds the whole (B, T, V) logits (``losses.chunked_caption_loss``)."""
        return self.decoder.generative(tokens, visual_tokens, prefix, prompt_lengths=prompt_lengths, logits=False)

    def chunked_caption_loss(self, hidden: Tensor, targets: Tensor, ignore_index: int, label_smoothing: float = 0.0,
                             chunk_tokens: int = 2048) -> Tensor:
        """The caption loss of ``caption_hidden``'s states (B, T, C) against targets (B, T), built
        ``chunk_tokens`` logits at a time (``losses.chunked_caption_loss``). A method of the model,
        so that under FSDP2 it is an entry point: the vocabulary projection's full weight is
        gathered for it, as for ``forward``."""
        return chunked_caption_loss(hidden, self.decoder.lm_head, targets, ignore_index, label_smoothing,
                                    chunk_tokens)

    def scale(self) -> Tensor:
        # Clamped as in CLIP so the temperature cannot fall below 1/100.
        return self.logit_scale.clamp(max=math.log(100.0)).exp().squeeze(0)

    def forward(self, images: Tensor, tokens: Tensor, caption_logits: bool = True) -> MammutOutput:
        """Both passes. ``caption_logits=False``: the generative pass's hidden states
        (``caption_hidden``) in place of its logits."""
        visual_tokens = self.encode_image(images)
        generative = (self.caption_logits if caption_logits else self.caption_hidden)(tokens[:, :-1], visual_tokens)
        return MammutOutput(
            image_embedding=self.image_embedding(visual_tokens),
            text_embedding=self.text_embedding(tokens),
            caption_logits=generative if caption_logits else None,
            logit_scale=self.scale(),
            caption_hidden=None if caption_logits else generative,
        )

    # Methods other than forward that evaluation calls first: under FSDP2 they gather the
    # root's weights as forward does (``sharding.shard``).
    fsdp_entry_points = ("encode_image", "encode_patches", "encode_image_with_layers", "image_embedding",
                         "project_tokens", "text_embedding", "caption_logits", "caption_hidden",
                         "chunked_caption_loss")

    def no_weight_decay(self) -> set[str]:
        """Parameters that take no weight decay: norm scales, biases, the temperature, the
        embeddings (the ViT's own list, as timm declares it, and the decoder's)."""
        names = {name for name, parameter in self.named_parameters() if parameter.ndim < 2}
        names |= {f"vision.vit.{name}" for name in self.vision.vit.no_weight_decay()}
        return names | {"decoder.token_embedding.weight", "decoder.position_embedding"}

    def transformer_blocks(self) -> list[nn.Module]:
        """The repeated blocks: the units of compilation, sharding and activation checkpointing."""
        return [*self.vision.vit.blocks, *self.vision.video_blocks.values(), *self.decoder.layers]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.vision.set_grad_checkpointing(enable)
        self.decoder.grad_checkpointing = enable
