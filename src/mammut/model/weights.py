"""One door for weights: every way weights come into a model passes through ``conform``.

The ways in: ``init_from`` and an adapter's base (``load_mammut_weights``), ``--ckpt_path`` and
``load_from_checkpoint`` (Lightning restores the state that ``conform`` prepared), and
``vision_weights`` (``load_weights`` on the timm ViT). As open_clip's ``load_checkpoint``, each
does the same steps:

1. read the file without running code (``weights_file.read_state_dict``);
2. names: an openMaMMUT file is converted (``openmammut``), old names are renamed (a prefix
   map, e.g. a task's keys from before tasks were components), and a name of a layer that
   LoRA wrapped (``qkv.base_layer.weight``) matches its plain name (``qkv.weight``);
3. shapes: a single number fits whether stored with shape () or (1,), and a tensor of another
   shape is resampled where the target says how (a position embedding of another grid, a text
   position embedding of another context length);
4. load, and report what was placed, what had no place, and what kept its initialisation.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from torch import Tensor, nn

from .lora import base_key
from .openmammut import convert as convert_openmammut
from .openmammut import is_openmammut
from .weights_file import read_state_dict

log = logging.getLogger(__name__)

SHOWN = 5  # names quoted per list in messages; the count says how many there are

Source = str | os.PathLike | Mapping[str, Tensor]


@dataclass
class LoadReport:
    """What a weights file gave a model, under the model's names (LoRA's wrapping left out)."""

    source: str
    placed: list[str]
    skipped: list[str]   # in the file, with no place in the model: no such name, or another shape
    unfilled: list[str]  # in the model, not in the file: they keep their initialisation

    def __str__(self) -> str:
        return (f"loaded {len(self.placed)} tensors from {self.source}; {len(self.unfilled)} kept their "
                f"initialisation" + (f" (e.g. {self.unfilled[:SHOWN]})" if self.unfilled else "")
                + (f"; {len(self.skipped)} had no place or another shape: {self.skipped[:SHOWN]}" if self.skipped else ""))


def conform(state: Mapping[str, Tensor], target: Mapping[str, Tensor], renames: Mapping[str, str] | None = None,
            resample: Mapping[str, Callable[[Tensor], Tensor]] | None = None) -> tuple[dict[str, Tensor], list[str]]:
    """``state`` under the names and shapes of ``target`` (a state dict): (what fits, the keys of
    ``state`` that have no place).

    ``renames``: old key prefix -> new one. ``resample``: target key -> a function that brings a
    tensor of another shape to the target's.
    """
    renames, resample = renames or {}, resample or {}
    plain = {base_key(name): name for name in target}  # under LoRA, qkv.weight lives at qkv.base_layer.weight
    fitted, skipped = {}, []
    for original, value in state.items():
        old = next((prefix for prefix in renames if original.startswith(prefix)), None)
        key = renames[old] + original[len(old):] if old else original
        name = key if key in target else plain.get(key)
        if name is None:
            skipped.append(original)
            continue
        shape = target[name].shape
        if value.shape != shape and name in resample:
            value = resample[name](value)
        if value.shape == shape or value.numel() == shape.numel() == 1:  # a single number: () or (1,)
            fitted[name] = value.reshape(shape)
        else:
            skipped.append(original)
    return fitted, skipped


def load_weights(target: nn.Module, state: Mapping[str, Tensor], name: str, *,
                 renames: Mapping[str, str] | None = None,
                 resample: Mapping[str, Callable[[Tensor], Tensor]] | None = None,
                 required: Callable[[str], bool] = lambda key: False, purpose: str = "weights") -> LoadReport:
    """Load what fits of ``state`` (read from the file ``name``) into ``target``.

    Fails, naming the file, when nothing fits or when a parameter for which ``required`` is true
    stays unfilled; everything else is reported (and logged), not silently dropped.
    """
    own = target.state_dict()
    try:
        fitted, skipped = conform(state, own, renames, resample)
    except ValueError as error:  # a tensor that cannot be resampled: say which file holds it
        raise ValueError(f"{purpose}: {name}: {error}") from error
    # A tied weight (the output projection and the token embedding) is filled with its twin.
    filled = {own[k].data_ptr() for k in fitted if own[k].numel()}
    unfilled = sorted(base_key(k) for k in own if k not in fitted and ".lora_" not in k  # adapters start anew
                      and not (own[k].numel() and own[k].data_ptr() in filled))
    missing = [k for k in unfilled if required(k)]
    if missing:
        raise ValueError(f"{purpose}: {name}: {len(missing)} parameters missing or of another shape, e.g. "
                         f"{missing[:SHOWN]}" + (f"; no place for {skipped[:SHOWN]}" if skipped else ""))
    if not fitted:
        raise ValueError(f"{purpose}: {name}: no parameter matches this model by name and shape")
    target.load_state_dict(fitted, strict=False)
    report = LoadReport(name, sorted(base_key(k) for k in fitted), skipped, unfilled)
    log.info("%s", report)
    return report


def load_mammut_weights(target: nn.Module, source: Source, *, model_prefix: str = "",
                        renames: Mapping[str, str] | None = None, strict: bool = False,
                        purpose: str = "init_from") -> LoadReport:
    """``load_weights`` for a module holding a ``Mammut`` at ``model_prefix`` (``"model."`` in a
    MammutModule, ``""`` for the Mammut itself): a mammut checkpoint, state dict or safetensors
    file, or an openMaMMUT checkpoint, converted and required to fill the whole image-text model.

    A position embedding of another grid is resampled to the model's, a text position embedding
    of another context length fitted to the model's; video tubes that the file
    does not hold start from its patch embedding. ``strict``: every parameter must be filled.
    """
    model = target.get_submodule(model_prefix.rstrip(".")) if model_prefix else target  # a Mammut
    name = str(source) if not isinstance(source, Mapping) else "a state dict"
    state = read_state_dict(source, purpose) if not isinstance(source, Mapping) else dict(source)
    if any(".lora_" in key for key in state):
        raise ValueError(f"{purpose}: {name} holds LoRA adapters: merge them into its weights first "
                         f"(python -m mammut.merge_lora {name} --out merged.ckpt) and start from that")
    imported = is_openmammut(state)
    if imported:
        state = {model_prefix + key: value for key, value in from_openmammut(state, model.config, name).items()}
    video = tuple(model_prefix + prefix for prefix in model.VIDEO_PATH)
    token_use = model_prefix + model.TOKEN_USE
    # An import must fill the whole image-text model; the video path and task heads keep their own.
    required = (lambda key: key.startswith(model_prefix) and not key.startswith(video)) if imported \
        else (lambda key: True) if strict else (lambda key: False)
    report = load_weights(target, state, name, renames=renames, purpose=purpose,
                          required=lambda key: key != token_use and required(key),
                          resample={model_prefix + model.POSITION_EMBEDDING: model.vision.resample_position_embedding,
                                    model_prefix + model.TEXT_POSITION_EMBEDDING: model.decoder.resize_position_embedding})
    if model.vision.tubes is not None and not any(k.startswith(model_prefix + model.TUBES) for k in report.placed):
        model.vision.initialise_tubes()  # image weights: the video tubes start from their patch embedding
    if token_use not in report.placed:
        model.token_use.forget()  # weights trained elsewhere: which rows they met is unknown
    return report


def from_openmammut(state: Mapping[str, Tensor], config, name: str) -> dict[str, Tensor]:
    """An openMaMMUT state dict under mammut's names; what the conversion cannot place is an error."""
    conversion = convert_openmammut(dict(state), config)
    if conversion.unused:
        raise ValueError(f"{name}: {len(conversion.unused)} openMaMMUT tensors have no place in this architecture, "
                         f"e.g. {conversion.unused[:SHOWN]}; is model.architecture openMaMMUT's "
                         "(configs/model/openmammut_l14.yaml)?")
    log.info("%s: openMaMMUT checkpoint, %d tensors converted to mammut's names", name, len(conversion.state))
    return conversion.state
