"""The image encoder: a timm Vision Transformer that returns visual tokens (MaMMUT Sec. 3.1).

Images (B, 3, H, W) take the ViT's own patch and position embedding; clips (B, 3, T, H, W) are
cut into sparse tubes (``tubes.SparseTubes``, MaMMUT Sec. 3.4) whose tokens go through the same
blocks once, so the input's shape decides which path runs.

With ``fusion_vision_block`` set, a ``TokenLearner`` after that block replaces the patch or tube
tokens by a few learned ones (TokenLearner, Ryoo et al. 2021, "in the middle of the network"); the
class token stays. ``forward(..., learned_tokens=False)`` runs every block over every token instead:
the blocks work on any number of tokens, so a per-token head gets one token per patch at full depth.
"""

from __future__ import annotations

import logging
import math

import timm
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import Block, checkpoint_filter_fn
import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .attention import checkpoint_attention_contexts, cpu_bf16_friendly_attention
from .config import MammutConfig
from .cropped_position import crop_position_grid, random_crops
from .patch_embedding import ConvStem, overlapping_patches
from .token_learner import TokenLearner
from .tubes import SparseTubes
from .weights import load_weights
from .weights_file import read_state_dict

logger = logging.getLogger(__name__)

# LayerScale of the video-only blocks at the start (CaiT's small init): each starts as nearly the identity.
VIDEO_BLOCK_INIT = 1e-4


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
        self.vit = timm.create_model(config.vision_model, pretrained=False, **shape)
        if weights is not None:
            # Through the one door for weights (read without running code); timm's own filter
            # maps original ViT names and resamples the position and patch embeddings to this
            # image and patch size. Every ViT parameter must be filled; the file's classifier is left out.
            state = checkpoint_filter_fn(read_state_dict(weights, purpose="vision_weights"), self.vit)
            load_weights(self.vit, state, str(weights), required=lambda key: True, purpose="vision_weights")
        if config.patch_embedding == "conv_stem":
            if weights is not None:
                logger.info("vision_weights: the conv stem replaces the file's patch embedding and starts "
                            "from random initialisation")
            self.vit.patch_embed.proj = ConvStem(3, config.vision_width, config.patch_size)
        elif config.patch_overlap:
            self.vit.patch_embed.proj = overlapping_patches(self.vit.patch_embed.proj, config.patch_overlap,
                                                            keep_weights=weights is not None)
        self.num_prefix_tokens = self.vit.num_prefix_tokens
        self.cpe_grid, self.cpe_crop_scale, self.cpe_crop_aspect = (config.cpe_grid, config.cpe_crop_scale,
                                                                    config.cpe_crop_aspect)
        self.pooling = config.image_pooling
        self.norm_after_pool = config.vision_norm_after_pool
        self.grad_checkpointing = False
        self.tubes = None
        if config.tube_shapes is not None:
            self.tubes = SparseTubes(config.tubes(), config.vision_width, config.video_frames, config.image_size,
                                     config.patch_size)
            self.initialise_tubes()
        # mPLUG-2's modality-specific modules: a block of its own before each listed shared block,
        # run on clips only. A ModuleDict keyed by the shared block's index.
        self.video_blocks = nn.ModuleDict({
            str(i): Block(config.vision_width, config.vision_heads, config.mlp_ratio, qkv_bias=True,
                          init_values=VIDEO_BLOCK_INIT) for i in sorted(set(config.video_layers))})
        # Learned tokens after block ``fusion_vision_block``: the same learner for images and clips.
        self.fusion_block = config.fusion_vision_block
        self.token_learner = (TokenLearner(config.vision_width, config.fusion_tokens, config.fusion_bottleneck)
                              if self.fusion_block is not None else None)

    @torch.no_grad()
    def initialise_tubes(self) -> None:
        """Start the video tubes from the image model; called again when weights are loaded that
        hold the image model but no tubes.

        The 3D kernels are inflated from the linear patch embedding (TubeViT Sec. 3.3); a
        convolutional stem has no linear kernel to inflate, so they keep their random
        initialisation (the frame tubes use the stem as it is).
        """
        if self.tubes is None:
            return
        projection = self.vit.patch_embed.proj
        if isinstance(projection, nn.Conv2d):
            self.tubes.initialise_from(projection)
        elif self.tubes.kernels:
            logger.info("the 3D video tubes keep their own initialisation (random; a random temporal derivative for "
                        "motion tubes): the %s patch embedding has no linear kernel to inflate (the frame tubes use "
                        "it as it is)", type(projection).__name__)

    def embed(self, inputs: Tensor) -> Tensor:
        """Tokens before the first block: of images (B, 3, H, W) by the ViT's patch and position
        embedding, of clips (B, 3, T, H, W) by the tubes, behind the same class token."""
        vit = self.vit
        if inputs.ndim == 4:
            patches = vit.patch_embed(inputs)
            embedded = self.cropped_pos_embed(patches) if self.cpe_grid and self.training else vit._pos_embed(patches)
            return vit.norm_pre(vit.patch_drop(embedded))
        if inputs.ndim != 5:
            raise ValueError(f"expected images (B, 3, H, W) or clips (B, 3, T, H, W), got shape {tuple(inputs.shape)}")
        if self.tubes is None:
            raise ValueError("this model has no video path: set architecture.tube_shapes to encode clips")
        tokens = self.tubes(inputs, frame_embedding=lambda frames: vit._pos_embed(vit.patch_embed(frames))[
            :, self.num_prefix_tokens:])
        return vit.norm_pre(vit.patch_drop(torch.cat([self._prefix_tokens(len(inputs), tokens.dtype), tokens], dim=1)))

    def cropped_pos_embed(self, patches: Tensor) -> Tensor:
        """Patch tokens (B, N, C) with a random crop of the upsampled position embedding each
        (``cropped_position``), behind the class token, as ``vit._pos_embed`` puts them."""
        vit = self.vit
        prefix = 0 if vit.no_embed_class else self.num_prefix_tokens
        height, width = vit.patch_embed.grid_size
        grid = vit.pos_embed[0, prefix:].reshape(height, width, -1)
        crops = random_crops(len(patches), self.cpe_crop_scale, self.cpe_crop_aspect, device=patches.device)
        cropped = crop_position_grid(grid, (self.cpe_grid, self.cpe_grid), crops).flatten(1, 2)
        tokens = torch.cat([self._prefix_tokens(len(patches), patches.dtype), patches + cropped.to(patches.dtype)], dim=1)
        return vit.pos_drop(tokens)

    def _prefix_tokens(self, batch: int, dtype: torch.dtype) -> Tensor:
        """The class (and register) tokens with their position embedding, as timm adds them."""
        vit = self.vit
        prefix = [token for token in (vit.cls_token, vit.reg_token) if token is not None]
        if not prefix:
            return torch.zeros(batch, 0, vit.embed_dim, dtype=dtype, device=vit.pos_embed.device)
        tokens = torch.cat(prefix, dim=1)
        if vit.pos_embed is not None and not vit.no_embed_class:
            tokens = tokens + vit.pos_embed[:, :self.num_prefix_tokens]
        return tokens.expand(batch, -1, -1).to(dtype)

    def run_blocks(self, x: Tensor, video: bool, keep: set[int] = frozenset(),
                   learned_tokens: bool = True) -> tuple[Tensor, list[Tensor]]:
        """The blocks (for ``video``, each listed video block before its shared one), then the
        final norm, unless it comes after pooling; also the output of each shared block in
        ``keep``, normed the same way. With a token learner and ``learned_tokens``, the tokens
        after its block are the class token and the learned ones."""
        finish = (lambda tokens: tokens) if self.norm_after_pool else self.vit.norm
        kept = []
        for index, block in enumerate(self.vit.blocks):
            layers = [block]
            if video and str(index) in self.video_blocks:
                layers.insert(0, self.video_blocks[str(index)])
            for layer in layers:
                if self.grad_checkpointing and self.training:
                    # The recomputation must use the forward's attention kernel; timm's own
                    # checkpointing would recompute outside cpu_bf16_friendly_attention.
                    x = checkpoint(layer, x, use_reentrant=False, context_fn=checkpoint_attention_contexts)
                else:
                    x = layer(x)
            if index == self.fusion_block and learned_tokens:
                x = self.learn_tokens(x)
            if index in keep:
                kept.append(finish(x))
        return finish(x), kept

    def learn_tokens(self, x: Tensor) -> Tensor:
        """(B, prefix + N, C) -> (B, prefix + S, C): the patch or tube tokens replaced by S learned ones."""
        prefix = self.num_prefix_tokens
        return torch.cat([x[:, :prefix], self.token_learner(x[:, prefix:])], dim=1)

    def forward(self, inputs: Tensor, learned_tokens: bool = True) -> Tensor:
        """images (B, 3, H, W) -> visual tokens (B, prefix + H/p * W/p, vision_width);
        clips (B, 3, T, H, W) -> visual tokens (B, prefix + tube tokens, vision_width); with a token
        learner (and ``learned_tokens``), (B, prefix + fusion_tokens, vision_width) either way."""
        with cpu_bf16_friendly_attention():
            return self.run_blocks(self.embed(inputs), video=inputs.ndim == 5, learned_tokens=learned_tokens)[0]

    def forward_with_layers(self, images: Tensor, layers: list[int]) -> tuple[Tensor, Tensor]:
        """Visual tokens, and the pooled token of each block in ``layers`` (B, len(layers), width),
        in block order; of images or clips.

        Block indices count from 0 (negative ones from the end); their outputs pass through the
        encoder's final norm, so every layer's token is on the scale of the last one.
        """
        depth = len(self.vit.blocks)
        if any(not -depth <= i < depth for i in layers) or not layers:
            raise ValueError(f"visual layers {layers} must be block indices in [-{depth}, {depth})")
        with cpu_bf16_friendly_attention():
            tokens, intermediates = self.run_blocks(self.embed(images), video=images.ndim == 5,
                                                    keep={i % depth for i in layers})
        return tokens, torch.stack([self.pool(x) for x in intermediates], dim=1)

    def resample_position_embedding(self, position_embedding: Tensor) -> Tensor:
        """A position embedding of another square patch grid (weights trained at another image
        size) resampled to this encoder's grid, bicubically as timm resamples pretrained weights;
        the class token's entry is kept as it is."""
        vit = self.vit
        prefix = 0 if vit.no_embed_class else self.num_prefix_tokens
        cells = position_embedding.shape[1] - prefix
        side = math.isqrt(cells)
        if side * side != cells or position_embedding.shape[-1] != vit.pos_embed.shape[-1]:
            raise ValueError(f"cannot resample a position embedding of shape {tuple(position_embedding.shape)} "
                             f"to {tuple(vit.pos_embed.shape)}: not a square grid of the same width")
        logger.info("position embedding resampled from a %dx%d to a %dx%d patch grid", side, side,
                    *vit.patch_embed.grid_size)
        return resample_abs_pos_embed(position_embedding, new_size=list(vit.patch_embed.grid_size),
                                      old_size=[side, side], num_prefix_tokens=prefix)

    def pool(self, visual_tokens: Tensor) -> Tensor:
        if self.pooling == "cls":
            if self.num_prefix_tokens == 0:
                raise ValueError("image_pooling='cls' needs a ViT with a class token")
            pooled = visual_tokens[:, 0]
        elif self.pooling == "mean_all":
            pooled = visual_tokens.mean(dim=1)
        else:
            pooled = visual_tokens[:, self.num_prefix_tokens:].mean(dim=1)
        return self.vit.norm(pooled) if self.norm_after_pool else pooled

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
