"""A compiled single-token decoding step, for fast caption generation at inference.

Eager PyTorch spends most of a cached decoding step at small batches on per-operation
overhead: the step is about 170 small operations, and its cost barely changes from 1 image to
8. Inductor with ``max_autotune`` and ``freezing`` turns the step into a few fused kernels and
prepacked GEMMs (bench/RESULTS.md). The step must then keep fixed shapes, which
``StaticKVCache`` provides, so that one graph serves every position.

Freezing folds the decoder's weights into the graph as constants, so a graph must never
outlive the weights it was built from: every ``generate`` call compares a fingerprint of the
weights with the one the graphs were built on, and drops them when they differ (after an
optimizer step, a checkpoint load, or any other change), so that the step compiles afresh.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .text_decoder import DecoderState, TextDecoder

# Prepacked, autotuned GEMMs need the weights frozen into the graph. Inductor reads ``freezing``
# from its global config, not from torch.compile's options, so it is patched around each call.
# The autotuner's timing tables would otherwise be printed for every matmul.
COMPILE_OPTIONS = {"max_autotune": True, "autotune_num_choices_displayed": 0}


def weights_fingerprint(module: torch.nn.Module) -> tuple:
    """Changes whenever any parameter or buffer does: its storage (replaced tensors), its
    version counter (in-place updates such as optimizer steps) and its norm (writes through
    ``.data``, which bypass the version counter)."""
    tensors = [t.detach() for t in (*module.parameters(), *module.buffers())]
    norms = torch.stack(torch._foreach_norm(tensors)).tolist() if tensors else []
    return tuple((t.data_ptr(), t._version) for t in tensors), tuple(norms)


class CompiledDecoding:
    """``TextDecoder.continue_decoding``, compiled with frozen weights, rebuilt when they change.

    Dynamo keeps its graphs per function, not per decoder, so the fingerprint includes which
    decoder the graphs were built for: a call with other weights, or another decoder, drops them.
    One graph per batch size, cache length and dtype (``dynamic=False``: a dynamic batch would
    rule out the prepacked GEMMs). Past ``torch._dynamo.config.recompile_limit`` distinct shapes
    the step runs eagerly, with the same results.
    """

    def __init__(self):
        self.built_from: tuple | None = None
        self.step: Callable | None = None  # wrapped on first use: importing the model need not load dynamo

    def for_weights_of(self, decoder: TextDecoder) -> Callable[[TextDecoder, Tensor, DecoderState], Tensor]:
        """The compiled step, safe to call with ``decoder`` for as long as its weights stay as
        they are now: call this again after they may have changed (once per ``generate``)."""
        _check_whole_weights(decoder)
        if self.step is None:
            # Not fullgraph: past the recompile limit that would raise, where this runs eagerly.
            self.step = torch.compile(TextDecoder.continue_decoding, dynamic=False, options=COMPILE_OPTIONS)
        fingerprint = (id(decoder), weights_fingerprint(decoder))
        if fingerprint != self.built_from:
            # The graphs hold other weights as constants: drop them all, so that the next call
            # compiles afresh from the current ones.
            torch._dynamo.reset_code(TextDecoder.continue_decoding.__code__)
            self.built_from = fingerprint
        return self._frozen_step

    def _frozen_step(self, decoder: TextDecoder, x: Tensor, state: DecoderState) -> Tensor:
        with torch._inductor.config.patch(freezing=True):
            return self.step(decoder, x, state)


def _check_whole_weights(decoder: TextDecoder) -> None:
    from torch.distributed.fsdp import FullyShardedDataParallel

    sharded = [name for name, p in decoder.named_parameters() if type(p) is not torch.nn.Parameter]
    if sharded or any(isinstance(m, FullyShardedDataParallel) for m in decoder.modules()):
        raise ValueError("compiled decoding freezes the decoder's whole weights into the graph, and this decoder's "
                         f"are sharded ({sharded[0] if sharded else 'FSDP'}): generate with compile: false")


compiled_decoding = CompiledDecoding()
