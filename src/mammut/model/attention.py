"""Multi-head self- and cross-attention through ``F.scaled_dot_product_attention``, with a KV cache."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel


def attend(q: Tensor, k: Tensor, v: Tensor, **kwargs) -> Tensor:
    """``F.scaled_dot_product_attention``, run in fp32 for bf16 inputs on the CPU.

    PyTorch's CPU flash-attention backward is several times slower in bf16 than in fp32 at
    these head sizes (bench/RESULTS.md), so the upcast makes bf16-mixed training faster.
    """
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        with torch.autocast("cpu", enabled=False):
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **kwargs).to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, **kwargs)


def _bf16_autocast_on_cpu() -> bool:
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


@contextmanager
def cpu_bf16_friendly_attention():
    """For attention code we do not own (timm's ViT): the math backend under CPU bf16 autocast,
    for the same reason as ``attend``."""
    with sdpa_kernel(SDPBackend.MATH) if _bf16_autocast_on_cpu() else nullcontext():
        yield


def checkpoint_attention_contexts():
    """``context_fn`` for ``torch.utils.checkpoint``: the forward and its recomputation in the
    backward pass (where autocast is off) both use the kernel ``cpu_bf16_friendly_attention``
    picks now, so that they save the same tensors."""
    use_math = _bf16_autocast_on_cpu()
    return tuple(sdpa_kernel(SDPBackend.MATH) if use_math else nullcontext() for _ in range(2))


class KVCache:
    """Keys and values of past positions for one self-attention layer, preallocated once.

    Incremental decoding then costs one new token of attention per step instead of a whole
    re-run of the prefix. ``reorder`` follows beam search as it keeps and drops hypotheses.
    """

    def __init__(self, max_length: int):
        self.max_length = max_length
        self.length = 0
        self.keys: Tensor | None = None
        self.values: Tensor | None = None

    def _allocate(self, keys: Tensor) -> None:
        # On first use, so that the buffers take the dtype autocast gives the keys. Zeros, not
        # empty: a masked slot still meets a zero attention weight, and 0 * NaN would be NaN.
        B, nh, _, hs = keys.shape
        self.keys = keys.new_zeros(B, nh, self.max_length, hs)
        self.values = keys.new_zeros(B, nh, self.max_length, hs)

    def update(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """Store the new positions' keys and values (B, nh, T, hs). Returns the keys and values
        the new queries attend to, and their mask (T, S), True where a query may look; None
        when every returned key is visible to every query."""
        past, T = self.length, keys.shape[2]
        if past + T > self.max_length:
            raise ValueError(f"KV cache holds {self.max_length} positions, asked for {past + T}")
        if self.keys is None:
            self._allocate(keys)
        self.keys[:, :, past:past + T] = keys
        self.values[:, :, past:past + T] = values
        self.length = past + T
        # A block of new tokens after a cached prefix: each sees the prefix and its own past.
        mask = None if T == 1 else torch.ones(T, past + T, dtype=torch.bool, device=keys.device).tril(past)
        return self.keys[:, :, :past + T], self.values[:, :, :past + T], mask

    def reorder(self, batch_indices: Tensor) -> None:
        if self.keys is None:
            return
        self.keys = self.keys.index_select(0, batch_indices)
        self.values = self.values.index_select(0, batch_indices)


class StaticKVCache(KVCache):
    """A ``KVCache`` whose step shapes never change, for a compiled decoding step.

    Every step attends over all ``max_length`` slots, masking those not yet written, and the
    write position lives in a tensor, not a Python int, so one compiled graph serves every
    step: a Python int would be specialised into the graph and recompile it at each position.
    """

    def __init__(self, max_length: int):  # no super().__init__: ``length`` is read from a tensor here
        self.max_length = max_length
        self.keys: Tensor | None = None
        self.values: Tensor | None = None
        self.next_position: Tensor | None = None  # (1,) long

    @property
    def length(self) -> int:
        return 0 if self.next_position is None else int(self.next_position)

    def update(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        T = keys.shape[2]
        # Checked eagerly only: reading the position back would break the compiled graph.
        if not torch.compiler.is_compiling() and self.length + T > self.max_length:
            raise ValueError(f"KV cache holds {self.max_length} positions, asked for {self.length + T}")
        if self.keys is None:
            self._allocate(keys)
            self.next_position = torch.zeros(1, dtype=torch.long, device=keys.device)
        positions = self.next_position + torch.arange(T, device=keys.device)
        self.keys.index_copy_(2, positions, keys)
        self.values.index_copy_(2, positions, values)
        self.next_position.add_(T)
        slots = torch.arange(self.max_length, device=keys.device)
        return self.keys, self.values, slots[None, :] <= positions[:, None]


class ContextCache:
    """Keys and values of a fixed context (the visual tokens) for one cross-attention layer.

    The layer computes them inside its own forward, at the first decoding step, and every later
    step reuses them. Keeping that work inside ``forward`` matters for sharded training: FSDP
    gathers a layer's weights only around its forward.
    """

    def __init__(self, context: Tensor):
        self.context = context
        self.keys_values: tuple[Tensor, Tensor] | None = None


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.dropout = dropout

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None, causal: bool = False,
                cache: KVCache | None = None) -> Tensor:
        """x: (B, T, C). key_padding_mask: (B, T), True where a token may be attended to.
        With a ``cache`` (causal decoding only), x holds the positions after the cached ones."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (B, nh, T, hs)
        is_causal = False
        if cache is not None:
            if key_padding_mask is not None or not causal:
                raise ValueError("a KV cache serves causal decoding without a padding mask")
            k, v, mask = cache.update(k, v)
        else:
            mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :]  # (B, 1, 1, T)
            is_causal = causal and T > 1 and mask is None
            if causal and mask is not None and T > 1:
                mask = mask & torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        y = attend(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class CrossAttention(nn.Module):
    """Text queries attend to the visual tokens; keys and values may be computed once and reused.

    ``context_norm``: a LayerNorm of the context's own before its keys and values (openMaMMUT's
    cross-attention blocks); otherwise the context comes as it is.

    ``learner``: a text-conditioned ``TokenLearner`` (Joint Adaptive Representations'
    iterative fusion): the layer attends to a few tokens learned from the context with the text
    of the prompt. The condition is the mean of the queries over the first ``condition_length``
    positions (the prompt, and the prefix before it); with a cache, over the positions of the
    call that fills it, which is the prompt, so later (generated) tokens never change the keys
    and values.
    """

    def __init__(self, width: int, context_width: int, heads: int, dropout: float = 0.0, context_norm: bool = False,
                 learner: nn.Module | None = None):
        super().__init__()
        self.heads = heads
        self.norm_context = nn.LayerNorm(context_width) if context_norm else None
        self.learner = learner
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(context_width, 2 * width)
        self.proj = nn.Linear(width, width)
        self.dropout = dropout

    def context_keys_values(self, context: Tensor, condition: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self.learner is not None:
            context = self.learner(context, condition)
        B, N, _ = context.shape
        C = self.q.out_features
        if self.norm_context is not None:
            context = self.norm_context(context)
        k, v = self.kv(context).view(B, N, 2, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        return k, v  # 2 x (B, nh, N, hs)

    def condition(self, x: Tensor, condition_length: Tensor | None) -> Tensor | None:
        """(B, C): the mean of ``x`` (B, T, C) over each row's first ``condition_length`` positions
        (all of them: None); None when the layer's tokens do not depend on the text."""
        if self.learner is None or self.learner.condition is None:
            return None
        if condition_length is None:
            return x.mean(dim=1)
        seen = (torch.arange(x.shape[1], device=x.device)[None] < condition_length[:, None]).to(x.dtype)
        return (x * seen[..., None]).sum(dim=1) / seen.sum(dim=1, keepdim=True).clamp(min=1)

    def forward(self, x: Tensor, context: Tensor | None = None, cache: ContextCache | None = None,
                condition_length: Tensor | None = None) -> Tensor:
        """Attend to ``context`` (B, N, context_width), or to the context held by ``cache``.
        ``condition_length`` (B,): positions of ``x`` that a conditioned learner reads."""
        B, T, C = x.shape
        if cache is None:
            k, v = self.context_keys_values(context, self.condition(x, condition_length))
        else:
            if cache.keys_values is None:  # the call that fills the cache holds the prompt
                cache.keys_values = self.context_keys_values(cache.context, self.condition(x, None))
            k, v = cache.keys_values
        q = self.q(x).view(B, T, self.heads, C // self.heads).transpose(1, 2)  # (B, nh, T, hs)
        y = attend(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))
