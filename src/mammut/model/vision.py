"""The image encoder: a timm Vision Transformer that returns visual tokens (MaMMUT Sec. 3.1)."""

from __future__ import annotations

import logging

import timm
import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .attention import checkpoint_attention_contexts, cpu_bf16_friendly_attention
from .config import MammutConfig
from .patch_embedding import ConvStem, overlapping_patches
from .weights_file import read_state_dict

logger = logging.getLogger(__name__)


class VisionEncoder(nn.Module):
    """Any timm ViT by name, reshaped by the config, from random init or a local weights file."""

    def __init__(self, config: MammutConfig):
        super().__init__()
        shape = dict(
            img_size=config.image_size, patch_size=config.patch_size, embed_dim=config.vision_width,
            depth=config.vision_depth, num_heads=config.vision_heads,
            num_classes=0, global_pool="", drop_rate=config.dropout,
        )
        weights = config.vision_weights
        if weights is not None:
            # Read once without running code (a torch file is a pickle), so that timm, whose
            # older releases unpickle in full, only ever reads a file that holds plain tensors.
            read_state_dict(weights, purpose="vision_weights")
            # timm loads .safetensors or a torch state dict and resamples the position
            # embedding when the image or patch size differs from the file's.
            self.vit = timm.create_model(config.vision_model, pretrained=True,
                                         pretrained_cfg_overlay={"file": str(weights)}, **shape)
        else:
            self.vit = timm.create_model(config.vision_model, pretrained=False, **shape)
        if config.patch_embedding == "conv_stem":
            if weights is not None:
                logger.info("vision_weights: the conv stem replaces the file's patch embedding and starts "
                            "from random initialisation")
            self.vit.patch_embed.proj = ConvStem(3, config.vision_width, config.patch_size)
        elif config.patch_overlap:
            self.vit.patch_embed.proj = overlapping_patches(self.vit.patch_embed.proj, config.patch_overlap,
                                                            keep_weights=weights is not None)
        self.num_prefix_tokens = self.vit.num_prefix_tokens
        self.pooling = config.image_pooling
        self.grad_checkpointing = False

    def forward(self, images: Tensor) -> Tensor:
        """images (B, 3, H, W) -> visual tokens (B, prefix + H/p * W/p, vision_width)."""
        with cpu_bf16_friendly_attention():
            if not (self.grad_checkpointing and self.training):
                return self.vit.forward_features(images)
            vit = self.vit  # timm's forward_features, with each block checkpointed
            x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(images))))
            for block in vit.blocks:
                # The recomputation must use the forward's attention kernel; timm's own
                # checkpointing would recompute outside cpu_bf16_friendly_attention.
                x = checkpoint(block, x, use_reentrant=False, context_fn=checkpoint_attention_contexts)
            return vit.norm(x)

    def forward_with_layers(self, images: Tensor, layers: list[int]) -> tuple[Tensor, Tensor]:
        """Visual tokens, and the pooled token of each block in ``layers`` (B, len(layers), width),
        in block order.

        Block indices count from 0 (negative ones from the end); their outputs pass through the
        encoder's final norm, so every layer's token is on the scale of the last one.
        """
        depth = len(self.vit.blocks)
        if any(not -depth <= i < depth for i in layers) or not layers:
            raise ValueError(f"visual layers {layers} must be block indices in [-{depth}, {depth})")
        blocks = sorted({i % depth for i in layers})
        with cpu_bf16_friendly_attention():
            tokens, intermediates = self.vit.forward_intermediates(
                images, indices=blocks, norm=True, output_fmt="NLC", return_prefix_tokens=True)
        pooled = [self.pool(torch.cat([prefix, patches], dim=1)) for patches, prefix in intermediates]
        return tokens, torch.stack(pooled, dim=1)

    def pool(self, visual_tokens: Tensor) -> Tensor:
        if self.pooling == "cls":
            if self.num_prefix_tokens == 0:
                raise ValueError("image_pooling='cls' needs a ViT with a class token")
            return visual_tokens[:, 0]
        return visual_tokens[:, self.num_prefix_tokens:].mean(dim=1)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

