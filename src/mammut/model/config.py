"""Architecture of a MaMMUT model as plain data, and the named size presets.

The presets follow the shape of the paper's models (MaMMUT, arXiv 2303.16839, Table 8) at
the large end, and shrink to sizes that train on a laptop CPU at the small end.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .tubes import TUBE_INITS, TubeShape


TEXT_POOLING = ("eos", "mean", "mean_all")
IMAGE_POOLING = ("mean", "cls", "mean_all")
DECODER_LAYOUTS = ("interleaved", "cross_blocks")
# Where the decoder learns its compact visual tokens (model/token_learner.py): not at all, once
# for every cross-attention layer, or again at each fusion layer, with the text.
DECODER_FUSION = ("none", "once", "iterative")


@dataclass
class MammutConfig:
    """Every architectural choice of the encoder-decoder. Token ids come from the tokenizer."""

    # Vision encoder (Sec. 3.1): any timm ViT by name; the fields below override its shape.
    vision_model: str = "vit_base_patch16_224"
    image_size: int = 64
    patch_size: int = 8
    vision_width: int = 192
    vision_depth: int = 4
    vision_heads: int = 3
    # Pixels by which each patch's window reaches past its patch on every side (0: plain,
    # non-overlapping patches). The token grid stays image_size / patch_size; overlapping windows
    # let a token see a small object whole when it straddles a patch border.
    patch_overlap: int = 0
    # "linear": the ViT's own patch embedding (widened by patch_overlap); "conv_stem": a stack of
    # stride-2 3x3 convolutions instead (Xiao et al. 2021), which needs a power-of-two patch_size.
    patch_embedding: str = "linear"
    # Optional local weights for the ViT (.safetensors or a torch state dict).
    vision_weights: str | None = None
    # Cropped positional embeddings in training (RO-ViT, Sec. 3.1; model/cropped_position.py): the
    # position embedding is upsampled to a cpe_grid x cpe_grid grid (the detector's, e.g. 12 for
    # 96 pixels at patch 8), a random region of cpe_crop_scale of its area and cpe_crop_aspect
    # width / height is cropped and resized back to the image grid, per image. None: off.
    cpe_grid: int | None = None
    cpe_crop_scale: tuple[float, float] = (0.1, 1.0)
    cpe_crop_aspect: tuple[float, float] = (0.5, 2.0)
    # Video (Sec. 3.4): clips of video_frames frames become sparse tube tokens (TubeViT, see
    # model/tubes.py) that go through the same ViT blocks once. Each tube is
    # {kernel: [t, h, w], stride: [t, h, w], offset: [t, h, w], dilation: [t, h, w]} in frames
    # and pixels (offset 0 and dilation 1 unless given); a kernel [1, patch_size, patch_size] of
    # spatial stride patch_size, no spatial offset and no dilation is the image path on the frames
    # it picks. A tube may add init: motion (a kernel that starts as a temporal derivative) or
    # init: velocity (a bank of velocity detectors), see model/tubes.py, rather than the default
    # init: inflate. None: an image-only model (no tube parameters).
    video_frames: int = 16
    tube_shapes: list[dict[str, list[int] | str]] | None = None
    # Modality-specific layers for video beside the shared ones (mPLUG-2, Xu et al. 2023): before
    # each ViT block listed here, clips (never images) pass a block of their own, whose residual
    # branches start near zero (LayerScale 1e-4) so that a pretrained image model is kept at first.
    video_layers: list[int] = field(default_factory=list)

    # Text decoder (Sec. 3.2), shared by the contrastive and the generative pass.
    vocab_size: int = 4096
    context_length: int = 32
    text_width: int = 192
    text_depth: int = 4
    text_heads: int = 3
    mlp_ratio: float = 4.0
    # Decoder layers (0-based) that cross-attend to the visual tokens in the generative pass.
    # The paper's ablation (Sec. 4.5): fewer favour retrieval, more favour VQA. None: every layer.
    cross_attention_layers: list[int] | None = field(default_factory=lambda: [1, 3])
    # Where a listed layer cross-attends. "interleaved": inside the layer, between its
    # self-attention and its MLP. "cross_blocks": after the layer, in a residual block of its own
    # (cross-attention with separate norms for the text and for the visual tokens, then an MLP of
    # its own): openMaMMUT's layout (LAION's open_clip fork, ``mammut.convert``).
    decoder_layout: str = "interleaved"
    # Map the visual tokens to text_width by a bias-free matrix before cross-attention, once for
    # every layer (openMaMMUT's ``map_viz2txt_kv``); otherwise each layer's keys and values are
    # projected from vision_width directly.
    visual_to_text: bool = False
    # Compact token fusion (model/token_learner.py: TokenLearner, Ryoo et al. 2021; Joint Adaptive
    # Representations, Piergiovanni & Angelova 2023). Off by default; each placement is measured in
    # docs/token-fusion.md. fusion_tokens learned tokens (S) take the place of the patch or tube tokens:
    # - fusion_vision_block: after this ViT block (0-based), the later blocks, the image embedding and
    #   the decoder see the class token and S learned tokens (per-token heads, detection, still get
    #   every patch: ``Mammut.encode_patches``). None: the ViT keeps every token.
    # - decoder_fusion: "once": one learner before the decoder's cross-attention, the encoder
    #   unchanged; "iterative": each layer of fusion_layers learns its S tokens again from the visual
    #   tokens, conditioned on the text prompt (the begin-of-text token, or a VQA question), never on
    #   generated tokens, so generation keeps its cache.
    fusion_tokens: int = 8
    fusion_bottleneck: int = 64
    fusion_vision_block: int | None = None
    decoder_fusion: str = "none"
    # Cross-attention layers that learn their tokens again with "iterative"; None: every one.
    fusion_layers: list[int] | None = None
    # Tie the output projection to the token embedding.
    tie_word_embeddings: bool = True
    dropout: float = 0.0

    # Contrastive embeddings (Sec. 3.3).
    embed_dim: int = 192
    # "eos": the hidden state at the end-of-text token; "mean": masked mean over the text;
    # "mean_all": openMaMMUT's contrastive pass, which attends to every position, padding
    # included, and averages them all (its embedding of a text depends on the padding).
    text_pooling: str = "eos"
    # Project the pooled text to embed_dim; without (openMaMMUT), embed_dim must equal text_width.
    text_projection: bool = True
    # "mean": average of the patch tokens; "cls": the class token; "mean_all": average of every
    # token, class token included (openMaMMUT's "avg_all").
    image_pooling: str = "mean"
    # The ViT's final norm on the pooled token only, not on the visual tokens, which then reach
    # the decoder as the last block left them (open_clip's ``final_ln_after_pool``).
    vision_norm_after_pool: bool = False
    init_temperature: float = 0.07

    # Special token ids, filled in from the tokenizer by the data module.
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.patch_overlap < 0:
            raise ValueError(f"patch_overlap must be 0 or more pixels, got {self.patch_overlap}")
        if self.patch_embedding not in ("linear", "conv_stem"):
            raise ValueError(f"patch_embedding must be 'linear' or 'conv_stem', got {self.patch_embedding!r}")
        if self.patch_embedding == "conv_stem" and self.patch_overlap:
            raise ValueError("patch_overlap applies to the linear patch embedding; set it to 0 with a conv_stem")
        if self.cpe_grid is not None and self.cpe_grid < self.image_size // self.patch_size:
            raise ValueError(f"cpe_grid {self.cpe_grid} must be at least the image's grid of "
                             f"{self.image_size // self.patch_size} patches a side: CPE crops a larger grid")
        low, high = self.cpe_crop_scale
        if not 0 < low <= high <= 1 or not 0 < self.cpe_crop_aspect[0] <= self.cpe_crop_aspect[1]:
            raise ValueError(f"cpe_crop_scale {self.cpe_crop_scale} must lie in (0, 1] and cpe_crop_aspect "
                             f"{self.cpe_crop_aspect} be positive, each (low, high)")
        for width, heads, name in ((self.vision_width, self.vision_heads, "vision"), (self.text_width, self.text_heads, "text")):
            if width % heads:
                raise ValueError(f"{name}_width {width} is not divisible by {name}_heads {heads}")
        for name, value, choices in (("text_pooling", self.text_pooling, TEXT_POOLING),
                                     ("image_pooling", self.image_pooling, IMAGE_POOLING),
                                     ("decoder_layout", self.decoder_layout, DECODER_LAYOUTS)):
            if value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        if not self.text_projection and self.embed_dim != self.text_width:
            raise ValueError(f"without a text_projection the text embedding is text_width={self.text_width} wide, "
                             f"but embed_dim={self.embed_dim}")
        if self.tube_shapes is not None:
            self.tubes()  # each shape is well formed and fits a clip
        if self.video_layers and self.tube_shapes is None:
            raise ValueError("video_layers need a video path: set tube_shapes too")
        if any(not 0 <= i < self.vision_depth for i in self.video_layers):
            raise ValueError(f"video_layers {self.video_layers} must be ViT block indices in 0..{self.vision_depth - 1}")
        if self.decoder_fusion not in DECODER_FUSION:
            raise ValueError(f"decoder_fusion must be one of {DECODER_FUSION}, got {self.decoder_fusion!r}")
        if self.fusion_tokens < 1 or self.fusion_bottleneck < 1:
            raise ValueError(f"fusion_tokens and fusion_bottleneck must be at least 1, got {self.fusion_tokens}, "
                             f"{self.fusion_bottleneck}")
        if self.fusion_vision_block is not None and not 0 <= self.fusion_vision_block < self.vision_depth:
            raise ValueError(f"fusion_vision_block {self.fusion_vision_block} must be a ViT block index in "
                             f"0..{self.vision_depth - 1}")
        if self.fusion_layers is not None:
            if self.decoder_fusion != "iterative":
                raise ValueError("fusion_layers apply to decoder_fusion: iterative")
            outside = sorted(set(self.fusion_layers) - self.cross_attention_layer_set)
            if outside:
                raise ValueError(f"fusion_layers {outside} are not cross-attention layers "
                                 f"({sorted(self.cross_attention_layer_set)})")
        bad = [i for i in self.cross_attention_layer_set if not 0 <= i < self.text_depth]
        if bad:
            raise ValueError(f"cross_attention_layers {bad} are outside 0..{self.text_depth - 1}")

    def tubes(self) -> list[TubeShape]:
        """The tube shapes as ``TubeShape``s, checked against the clip size."""
        shapes = []
        for position, spec in enumerate(self.tube_shapes or []):
            sizes = {key: tuple(spec.get(key, default)) for key, default in
                     (("kernel", ()), ("stride", ()), ("offset", (0, 0, 0)), ("dilation", (1, 1, 1)))}
            init = spec.get("init", "inflate")
            well_formed = (set(spec) <= {*sizes, "init"} and all(len(size) == 3 for size in sizes.values())
                           and init in TUBE_INITS)
            if (not well_formed or min(sizes["kernel"] + sizes["stride"] + sizes["dilation"]) < 1
                    or min(sizes["offset"]) < 0):
                raise ValueError(f"tube_shapes[{position}] = {spec}: expected {{kernel: [t, h, w], stride: [t, h, w], "
                                 f"offset: [t, h, w], dilation: [t, h, w], init: {' | '.join(TUBE_INITS)}}} with "
                                 "positive kernel, stride and dilation and an offset of 0 or more")
            shape = TubeShape(sizes["kernel"], sizes["stride"], sizes["offset"], init, sizes["dilation"])
            shape.grid(self.video_frames, self.image_size)
            shapes.append(shape)
        if self.tube_shapes is not None and not shapes:
            raise ValueError("tube_shapes is empty: give at least one tube, or null for an image-only model")
        return shapes

    @property
    def iterative_fusion_layer_set(self) -> set[int]:
        """Decoder layers that learn their visual tokens again, with the text."""
        if self.decoder_fusion != "iterative":
            return set()
        return self.cross_attention_layer_set if self.fusion_layers is None else set(self.fusion_layers)

    @property
    def cross_attention_layer_set(self) -> set[int]:
        if self.cross_attention_layers is None:
            return set(range(self.text_depth))
        return set(self.cross_attention_layers)


PRESETS: dict[str, MammutConfig] = {
    # CPU sizes. "tiny" is what `make pretrain` trains in about ten minutes on two cores.
    "tiny": MammutConfig(),
    "small": MammutConfig(
        image_size=128, patch_size=16, vision_width=384, vision_depth=8, vision_heads=6,
        text_width=384, text_depth=8, text_heads=6, cross_attention_layers=[1, 3, 5, 7], embed_dim=384,
    ),
    # Shaped after the paper (Table 8): ViT-B/16 and ViT-L/16 class encoders with a decoder
    # of the same width and cross-attention in every other layer.
    "base": MammutConfig(
        image_size=224, patch_size=16, vision_width=768, vision_depth=12, vision_heads=12,
        context_length=64, vocab_size=32000, text_width=768, text_depth=12, text_heads=12,
        cross_attention_layers=list(range(1, 12, 2)), embed_dim=768,
    ),
    "large": MammutConfig(
        vision_model="vit_large_patch16_224",
        image_size=224, patch_size=16, vision_width=1024, vision_depth=24, vision_heads=16,
        context_length=64, vocab_size=32000, text_width=1024, text_depth=12, text_heads=16,
        cross_attention_layers=list(range(1, 12, 2)), embed_dim=1024,
    ),
    # openMaMMUT-ViT-L-14 (LAION, arXiv 2506.04598): the layout of the fork's mammut_ViT-L-14, whose
    # weights ``init_from`` converts (``mammut.model.openmammut``); its CLIP tokenizer has 49408 tokens.
    "openmammut_l14": MammutConfig(
        vision_model="vit_large_patch14_clip_224",
        image_size=224, patch_size=14, vision_width=1024, vision_depth=24, vision_heads=16,
        context_length=77, vocab_size=49408, text_width=768, text_depth=12, text_heads=12,
        cross_attention_layers=list(range(0, 12, 2)), decoder_layout="cross_blocks", visual_to_text=True,
        tie_word_embeddings=False, embed_dim=768, text_pooling="mean_all", text_projection=False,
        image_pooling="mean_all", vision_norm_after_pool=True, pad_id=0, bos_id=49406, eos_id=49407,
    ),
}


def preset(name: str, **overrides) -> MammutConfig:
    """A named preset, with any field overridden: ``preset("tiny", vocab_size=512)``."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)
