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

    def append(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """keys, values: (B, nh, T, hs). Returns all cached positions so far."""
        end = self.length + keys.shape[2]
        if end > self.max_length:
            raise ValueError(f"KV cache holds {self.max_length} positions, asked for {end}")
        if self.keys is None:
            # Allocated on first use so that it takes the dtype autocast gives the keys.
            B, nh, _, hs = keys.shape
            self.keys = keys.new_empty(B, nh, self.max_length, hs)
            self.values = values.new_empty(B, nh, self.max_length, hs)
        self.keys[:, :, self.length:end] = keys
        self.values[:, :, self.length:end] = values
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def reorder(self, batch_indices: Tensor) -> None:
        if self.keys is None:
            return
        self.keys = self.keys.index_select(0, batch_indices)
        self.values = self.values.index_select(0, batch_indices)


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
        """x: (B, T, C). key_padding_mask: (B, T), True where a token may be attended to."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (B, nh, T, hs)
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.append(k, v)
        mask = None
        if key_padding_mask is not None:
            mask = key_padding_mask[:, None, None, :]  # (B, 1, 1, T)
        is_causal = causal and past == 0 and T > 1 and mask is None
        if causal and not is_causal and T > 1:
            # A block of new tokens after a cached prefix: each sees the prefix and its own past.
            causal_mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(past)
            mask = causal_mask if mask is None else mask & causal_mask
        y = attend(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class CrossAttention(nn.Module):
    """Text queries attend to the visual tokens; keys and values may be computed once and reused."""

    def __init__(self, width: int, context_width: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(context_width, 2 * width)
        self.proj = nn.Linear(width, width)
        self.dropout = dropout

    def context_keys_values(self, context: Tensor) -> tuple[Tensor, Tensor]:
        B, N, _ = context.shape
        C = self.q.out_features
        k, v = self.kv(context).view(B, N, 2, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        return k, v  # 2 x (B, nh, N, hs)

    def forward(self, x: Tensor, context: Tensor | None = None, cache: ContextCache | None = None) -> Tensor:
        """Attend to ``context`` (B, N, context_width), or to the context held by ``cache``."""
        B, T, C = x.shape
        if cache is None:
            k, v = self.context_keys_values(context)
        else:
            if cache.keys_values is None:
                cache.keys_values = self.context_keys_values(cache.context)
            k, v = cache.keys_values
        q = self.q(x).view(B, T, self.heads, C // self.heads).transpose(1, 2)  # (B, nh, T, hs)
        y = attend(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))
