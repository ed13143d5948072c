"""openMaMMUT (LAION, arXiv 2506.04598) in mammut's terms: its architecture as a ``MammutConfig``
and its weights under mammut's parameter names.

openMaMMUT was trained with a research fork of open_clip (``LAION-AI/open_clip_mammut``,
``mammut_model.py``). What its layout does differently from mammut's defaults is a set of
``MammutConfig`` options, all of which ``openmammut_config`` sets:

- the decoder: after every ``cross_step``-th self-attention layer, a cross-attention residual
  block of its own (``decoder_layout: cross_blocks``), fed visual tokens mapped to the text width
  by one bias-free matrix (``visual_to_text``); the vocabulary projection is untied, without bias;
- the contrastive pass: no attention mask at all and a mean over every position, padding
  included (``text_pooling: mean_all``), and no text projection (``text_projection: false``);
- the vision tower: open_clip's ViT, which is timm's CLIP ViT (pre-norm, bias-free patch
  embedding), pooled by the mean of all tokens, class token included (``image_pooling:
  mean_all``), with the final norm after pooling (``vision_norm_after_pool``).

``convert`` renames a state dict of the fork's key names to mammut's and lists the keys it could
not place; ``MammutModule.load_weights`` (``--model.init_from``) and ``python -m mammut.convert``
use it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import timm
import torch
from torch import Tensor

from .config import MammutConfig
from .token_use import NOT_RECORDED

# Keys only an openMaMMUT state dict has.
SIGNATURE_KEYS = ("map_viz2txt_kv", "text.cross_attn.0.ln_1_kv.weight")


def is_openmammut(state: dict[str, Tensor]) -> bool:
    return any(key in state or f"module.{key}" in state for key in SIGNATURE_KEYS)


def openmammut_config(open_clip_config: dict) -> MammutConfig:
    """The ``MammutConfig`` of a fork model config (``model_configs/mammut_*.json``: ``embed_dim``,
    ``vision_cfg``, ``text_cfg``). Options of the fork that mammut cannot express are an error."""
    vision, text = open_clip_config["vision_cfg"], open_clip_config["text_cfg"]
    unsupported = {
        "quick_gelu": open_clip_config.get("quick_gelu", False),
        "vision_cfg.ls_init_value": vision.get("ls_init_value"), "text_cfg.ls_init_value": text.get("ls_init_value"),
        "vision_cfg.attentional_pool": vision.get("attentional_pool", False),
        "vision_cfg.no_ln_pre": vision.get("no_ln_pre", False),
        "text_cfg.has_mlp is false": not text.get("has_mlp", True),
        "text_cfg.does_full_decoding is false": not text.get("does_full_decoding", False),
    }
    found = [name for name, value in unsupported.items() if value]
    if found:
        raise ValueError(f"openMaMMUT config options mammut does not implement: {found}")
    pooling = {"avg_all": "mean_all", "avg": "mean", "tok": "cls"}
    if vision.get("pool_type", "tok") not in pooling:
        raise ValueError(f"vision_cfg.pool_type {vision.get('pool_type')!r} is not one of {sorted(pooling)}")
    width, patch = vision["width"], vision["patch_size"]
    layers, ratio = text["layers"], text.get("cross_attn_ratio", 1)
    # The fork's rule: layers // ratio cross-attention blocks, one after every cross_step-th layer from the first.
    cross_step = layers // (layers // ratio)
    return MammutConfig(
        vision_model=_timm_clip_vit(width, patch),
        image_size=vision["image_size"], patch_size=patch, vision_width=width, vision_depth=vision["layers"],
        vision_heads=width // vision.get("head_width", 64), mlp_ratio=vision.get("mlp_ratio", 4.0),
        vocab_size=text["vocab_size"], context_length=text["context_length"], text_width=text["width"],
        text_depth=layers, text_heads=text["heads"],
        cross_attention_layers=list(range(0, layers, cross_step)), decoder_layout="cross_blocks",
        visual_to_text=True, tie_word_embeddings=False,
        embed_dim=open_clip_config["embed_dim"], text_pooling="mean_all", text_projection=False,
        image_pooling=pooling[vision.get("pool_type", "tok")],
        vision_norm_after_pool=vision.get("final_ln_after_pool", False),
    )


def _timm_clip_vit(width: int, patch: int) -> str:
    """A timm CLIP ViT of this width and patch, by name where timm has one (the shape is set by the
    config either way; the family gives the pre-norm and the bias-free patch embedding)."""
    size = {768: "base", 1024: "large", 1280: "huge"}.get(width, "base")
    name = f"vit_{size}_patch{patch}_clip_224"
    return name if timm.is_model(name) else "vit_base_patch16_clip_224"


@dataclass
class Conversion:
    state: dict[str, Tensor]  # mammut's names (of ``Mammut``'s parameters)
    unused: list[str]  # keys of the source that no rule places


def _same(tensor: Tensor) -> Tensor:
    return tensor


def _transposed(tensor: Tensor) -> Tensor:
    # open_clip stores these as (in, out) matrices used as x @ W; nn.Linear holds (out, in).
    return tensor.t().contiguous()


# Whole keys: fork name -> (mammut name, how the tensor changes).
SINGLE_KEYS: dict[str, tuple[str, Callable[[Tensor], Tensor]]] = {
    "visual.conv1.weight": ("vision.vit.patch_embed.proj.weight", _same),
    "visual.class_embedding": ("vision.vit.cls_token", lambda t: t.reshape(1, 1, -1)),
    "visual.positional_embedding": ("vision.vit.pos_embed", lambda t: t.unsqueeze(0)),
    "visual.ln_pre.weight": ("vision.vit.norm_pre.weight", _same),
    "visual.ln_pre.bias": ("vision.vit.norm_pre.bias", _same),
    "visual.ln_post.weight": ("vision.vit.norm.weight", _same),
    "visual.ln_post.bias": ("vision.vit.norm.bias", _same),
    "visual.proj": ("image_projection.weight", _transposed),
    "map_viz2txt_kv": ("decoder.visual_to_text.weight", _transposed),
    "logit_scale": ("logit_scale", lambda t: t.reshape(1)),
    "text.token_embedding.weight": ("decoder.token_embedding.weight", _same),
    "text.positional_embedding": ("decoder.position_embedding", _same),
    "text.ln_final.weight": ("decoder.norm.weight", _same),
    "text.ln_final.bias": ("decoder.norm.bias", _same),
    "text.text_projection": ("decoder.lm_head.weight", _transposed),
}
# Inside a residual block: fork module -> mammut module.
VISION_BLOCK = {"ln_1": "norm1", "attn.in_proj_weight": "attn.qkv.weight", "attn.in_proj_bias": "attn.qkv.bias",
                "attn.out_proj": "attn.proj", "ln_2": "norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
DECODER_LAYER = {"ln_1": "norm_self", "attn.in_proj_weight": "self_attention.qkv.weight",
                 "attn.in_proj_bias": "self_attention.qkv.bias", "attn.out_proj": "self_attention.proj",
                 "ln_2": "norm_mlp", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
CROSS_BLOCK = {"ln_1": "norm_query", "ln_1_kv": "cross_attention.norm_context", "attn.out_proj": "cross_attention.proj",
               "ln_2": "norm_mlp", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
BLOCK_KEY = re.compile(r"(visual\.transformer\.resblocks|text\.resblocks|text\.cross_attn)\.(\d+)\.(.+)")


def convert(source: dict[str, Tensor], config: MammutConfig) -> Conversion:
    """The fork's state dict under ``Mammut``'s names, for a model built from ``config``.

    The fork's j-th cross-attention block follows its (j * cross_step)-th layer; here it lives in
    the j-th layer of ``config.cross_attention_layers``, whose count must match.
    """
    cross_layers = sorted(config.cross_attention_layer_set)
    state, unused = {}, []
    for key, tensor in source.items():
        name = key.removeprefix("module.")  # saved from a DistributedDataParallel wrapper
        converted = _convert_key(name, tensor, cross_layers)
        if converted is None:
            unused.append(key)
        state.update(converted or {})
    # openMaMMUT does not record which vocabulary rows its training met (``token_use``).
    state["token_use.counts"] = torch.full((config.vocab_size,), NOT_RECORDED, dtype=torch.long)
    return Conversion(state, unused)


def _convert_key(name: str, tensor: Tensor, cross_layers: list[int]) -> dict[str, Tensor] | None:
    if name in SINGLE_KEYS:
        target, change = SINGLE_KEYS[name]
        return {target: change(tensor)}
    match = BLOCK_KEY.fullmatch(name)
    if match is None:
        return None
    stack, index, rest = match[1], int(match[2]), match[3]
    if stack == "visual.transformer.resblocks":
        return _in_block(rest, VISION_BLOCK, f"vision.vit.blocks.{index}", tensor)
    if stack == "text.resblocks":
        return _in_block(rest, DECODER_LAYER, f"decoder.layers.{index}", tensor)
    if index >= len(cross_layers):
        return None  # more cross-attention blocks than this config has: listed as unused
    prefix = f"decoder.layers.{cross_layers[index]}.cross_block"
    if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
        # One (3 * width) projection in the fork: queries from the text, keys and values from the image.
        part = rest.removeprefix("attn.in_proj_")
        width = tensor.shape[0] // 3
        return {f"{prefix}.cross_attention.q.{part}": tensor[:width].clone(),
                f"{prefix}.cross_attention.kv.{part}": tensor[width:].clone()}
    return _in_block(rest, CROSS_BLOCK, prefix, tensor)


def _in_block(rest: str, table: dict[str, str], prefix: str, tensor: Tensor) -> dict[str, Tensor] | None:
    for source, target in table.items():
        if rest == source or rest.startswith(source + "."):
            return {f"{prefix}.{target}{rest[len(source):]}": tensor}
    return None
