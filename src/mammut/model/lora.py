"""LoRA adapters on the shared model's linear layers, through Hugging Face ``peft``.

LoRA (Hu et al., arXiv 2106.09685) keeps a pretrained weight W frozen and trains a low-rank
update: a layer computes ``x W^T + (alpha / r) x A^T B^T`` with A (r x in) and B (out x r),
B starting at zero so that training starts from the pretrained model exactly. Placed on the
decoder's attention and MLP projections it changes how the decoder reads the question and the
image; placed on the vocabulary projection it gives every output word an r-dimensional
correction of its own, so a frozen decoder can learn to say words its pretraining never
produced (the answers "yes", "no" and numbers after a captions-only pretraining).

``peft.inject_adapter_in_model`` does the work on any ``nn.Module``: it wraps each chosen
``nn.Linear`` in a ``peft.tuners.lora.Linear`` (the original layer becomes its
``base_layer``) and marks every other parameter of the model frozen. ``merge_lora`` folds the
updates into the weights and puts the plain layers back, for export.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from torch import nn

# The decoder's attention and MLP projections: self- and cross-attention, both MLP layers.
DECODER_PROJECTIONS = ["decoder.layers.*.self_attention.*", "decoder.layers.*.cross_attention.*",
                       "decoder.layers.*.mlp.*"]


@dataclass
class LoraConfig:
    rank: int = 4                # r, the rank of each update
    alpha: float = 8.0           # the update is scaled by alpha / rank
    dropout: float = 0.0         # on a LoRA branch's input
    # Glob patterns of the model's linear layers to adapt (names below ``model.``), e.g.
    # "decoder.lm_head" (the vocabulary projection) or "vision.vit.blocks.*.attn.qkv" (the encoder).
    targets: list[str] = field(default_factory=lambda: list(DECODER_PROJECTIONS))


def lora_targets(model: nn.Module, patterns: list[str]) -> list[str]:
    """The names of the linear layers of ``model`` that the patterns match; each pattern must match one."""
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    unmatched = [p for p in patterns if not any(fnmatch.fnmatch(name, p) for name in linears)]
    if unmatched:
        raise ValueError(f"LoRA targets {unmatched} match no linear layer of the model; "
                         f"its linear layers are e.g. {linears[:8]}")
    return [name for name in linears if any(fnmatch.fnmatch(name, p) for p in patterns)]


def add_lora(model: nn.Module, config: LoraConfig) -> list[str]:
    """Wrap the matched linear layers of ``model`` in LoRA layers and freeze everything else of it.
    Returns the adapted layers' names."""
    import peft  # imported only when LoRA is asked for: it pulls in transformers

    if config.rank < 1:
        raise ValueError(f"LoRA rank must be at least 1, got {config.rank}")
    targets = lora_targets(model, config.targets)
    # Exact names: peft matches a listed name as the full name or a dotted suffix of it.
    settings = peft.LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                               target_modules=targets, bias="none")
    peft.inject_adapter_in_model(settings, model)
    return targets


def is_lora_layer(module: nn.Module) -> bool:
    from peft.tuners.lora import LoraLayer
    return isinstance(module, LoraLayer)


def merge_lora(model: nn.Module) -> int:
    """Fold every LoRA update into its base weight and put the plain layer back in its place, so
    the model has its original names and no adapter. A weight shared with another module (the
    vocabulary projection tied to the token embedding) is copied first: the update belongs to
    the projection alone. Returns the number of layers merged."""
    shared = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        shared.setdefault(id(parameter), []).append(name)
    adapted = [(name, module) for name, module in model.named_modules() if is_lora_layer(module)]
    for name, module in adapted:
        base = module.get_base_layer()
        if len(shared[id(base.weight)]) > 1:
            base.weight = nn.Parameter(base.weight.detach().clone(), requires_grad=base.weight.requires_grad)
        module.merge(safe_merge=True)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, base)
    return len(adapted)


def base_key(name: str) -> str:
    """A parameter's name without the LoRA wrapping: ``...qkv.base_layer.weight`` -> ``...qkv.weight``."""
    return name.replace(".base_layer.", ".")

