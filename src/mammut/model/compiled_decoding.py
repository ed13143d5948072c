"""A compiled single-token decoding step, for fast caption generation at inference.

At small batches an eager cached decoding step spends most of its time on per-operation
overhead, not arithmetic: it costs nearly as much for 1 image as for 8 (bench/generate.py).
Inductor with ``max_autotune`` and ``freezing`` turns the step into a few fused kernels and
prepacked GEMMs. The step must then keep fixed shapes, which ``StaticKVCache`` provides, so that
one graph serves every position.

Freezing folds the decoder's weights into the graph as constants, so a graph must never outlive
the weights it was built from: every ``generate`` call compares the decoder's weights with a copy
taken when the graphs were built, and drops the graphs when they differ (after an optimizer step,
a checkpoint load, a write through ``.data``, or another decoder), so that the step compiles
afresh. The graphs and that copy are process-wide, one set at a time: alternating two models
recompiles at every switch, and two threads must not generate compiled at once.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn
from torch._dynamo.exc import FailOnRecompileLimitHit
from torch.distributed.fsdp import FullyShardedDataParallel

from ..sharding import is_sharded
from .text_decoder import DecoderState, TextDecoder

# Prepacked, autotuned GEMMs need the weights frozen into the graph. Inductor reads ``freezing``
# from its global config, not from torch.compile's options, so it is patched around each call.
# The autotuner's timing tables and statistics would otherwise be printed for every matmul.
COMPILE_OPTIONS = {"max_autotune": True,
                   "autotune_num_choices_displayed": 0, "max_autotune_report_choices_stats": False}


class WeightsSnapshot:
    """A copy of a module's parameters and buffers, to tell whether they have changed since."""

    def __init__(self, module: nn.Module):
        self.module_id = id(module)
        self.tensors = [t.detach().clone() for t in _weights(module)]

    def matches(self, module: nn.Module) -> bool:
        current = _weights(module)
        return (id(module) == self.module_id and len(current) == len(self.tensors)
                and all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(current, self.tensors)))


def _weights(module: nn.Module) -> list[Tensor]:
    return [t.detach() for t in (*module.parameters(), *module.buffers())]


class CompiledDecoding:
    """``TextDecoder.continue_decoding``, compiled with frozen weights, rebuilt when they change.

    One graph per batch size, cache length and dtype (``dynamic=False``: a dynamic batch would
    rule out the prepacked GEMMs). Past ``torch._dynamo.config.recompile_limit`` distinct shapes
    the step runs eagerly, with the same results. ``fullgraph``: a graph break would leave resume
    functions whose frozen graphs ``reset_code`` of this one function could not drop.
    """

    def __init__(self):
        self.built_from: WeightsSnapshot | None = None
        self.step = torch.compile(TextDecoder.continue_decoding, dynamic=False, fullgraph=True, options=COMPILE_OPTIONS)

    def for_weights_of(self, decoder: TextDecoder) -> Callable[[TextDecoder, Tensor, DecoderState], Tensor]:
        """The compiled step, safe to call with ``decoder`` for as long as its weights stay as
        they are now: call this again after they may have changed (once per ``generate``)."""
        _check_whole_weights(decoder)
        if self.built_from is None or not self.built_from.matches(decoder):
            # The graphs hold other weights as constants: drop them all, so that the next call
            # compiles afresh from the current ones.
            torch._dynamo.reset_code(TextDecoder.continue_decoding.__code__)
            self.built_from = WeightsSnapshot(decoder)
        return self._frozen_step

    def _frozen_step(self, decoder: TextDecoder, x: Tensor, state: DecoderState) -> Tensor:
        try:
            with torch._inductor.config.patch(freezing=True):
                return self.step(decoder, x, state)
        except FailOnRecompileLimitHit:  # raised before the step runs, so nothing was written yet
            return decoder.continue_decoding(x, state)


def _check_whole_weights(decoder: TextDecoder) -> None:
    sharded = [name for name, p in decoder.named_parameters() if type(p) is not nn.Parameter]
    fsdp1 = any(isinstance(m, FullyShardedDataParallel) for m in decoder.modules())
    if sharded or fsdp1 or is_sharded(decoder):
        raise ValueError("compiled decoding freezes the decoder's whole weights into the graph, and this decoder's "
                         f"are sharded ({sharded[0] if sharded else 'FSDP'}): generate with compile: false")


compiled_decoding = CompiledDecoding()
