"""The MaMMUT text decoder: one stack of layers used in two passes (arXiv 2303.16839, Sec. 3.2).

- Generative pass: causal self-attention, plus cross-attention to the visual tokens in the
  layers named by ``cross_attention_layers``. It predicts the next token.
- Contrastive pass: the same weights with cross-attention switched off and bidirectional
  self-attention over the non-padding tokens. It is pooled into a text embedding.

Cross-attention sits inside a layer, between its self-attention and MLP, or, in openMaMMUT's
layout (``decoder_layout: cross_blocks``, ``model/openmammut.py``), in a block of its own after it.

Compact token fusion (``model/token_learner.py``): with ``decoder_fusion: once`` the layers
cross-attend to a few tokens learned once from the visual tokens; with ``iterative`` each layer of
``fusion_layers`` learns its own again, conditioned on the prompt it reads (Joint Adaptive
Representations, Piergiovanni & Angelova 2023), and the other cross-attention layers take the
tokens learned once. The condition is the prompt alone (the begin-of-text token, or a question,
and any prefix before it), in training as in generation, so the visual keys and values never
depend on generated tokens and stay cached.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from timm.layers import Mlp
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .attention import ContextCache, CrossAttention, KVCache, SelfAttention, StaticKVCache
from .config import MammutConfig
from .token_learner import TokenLearner

log = logging.getLogger(__name__)


@dataclass
class DecoderState:
    """What incremental decoding keeps between steps: per layer, the self-attention cache and,
    where the layer cross-attends, the visual keys and values."""

    self_attention: list[KVCache]
    visual: list[ContextCache | None]
    prefix_length: int = 0  # embeddings before the first token, e.g. PEFT prompts
    # A prefix that waits for the prompt: layers conditioned on the text read both in one call.
    pending_prefix: Tensor | None = None

    @property
    def length(self) -> int:
        return self.self_attention[0].length

    @property
    def tokens_seen(self) -> int:
        return self.length - self.prefix_length

    def reorder(self, batch_indices: Tensor) -> None:
        """Follow beam search. Hypotheses only move among the beams of their own image, whose
        visual keys and values are identical, so those stay where they are."""
        for cache in self.self_attention:
            cache.reorder(batch_indices)


class CrossAttentionBlock(nn.Module):
    """A residual block that only looks at the image: cross-attention, with norms of its own for
    the text and for the visual tokens, then an MLP of its own. openMaMMUT's decoder places one
    after some of its self-attention layers (``decoder_layout: cross_blocks``)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, visual_width: int, dropout: float,
                 learner: TokenLearner | None = None):
        super().__init__()
        self.norm_query = nn.LayerNorm(width)
        self.cross_attention = CrossAttention(width, visual_width, heads, dropout, context_norm=True, learner=learner)
        self.norm_mlp = nn.LayerNorm(width)
        self.mlp = Mlp(width, int(width * mlp_ratio), act_layer=nn.GELU, drop=dropout)

    def forward(self, x: Tensor, visual_tokens: Tensor | None, visual_cache: ContextCache | None,
                condition_length: Tensor | None = None) -> Tensor:
        x = x + self.cross_attention(self.norm_query(x), visual_tokens, visual_cache, condition_length)
        return x + self.mlp(self.norm_mlp(x))


class DecoderLayer(nn.Module):
    """Self-attention and MLP; in a layer that looks at the image, cross-attention too: between
    them (``interleaved``), or in a block of its own after them (``cross_blocks``)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, visual_width: int | None, dropout: float,
                 layout: str = "interleaved", learner: TokenLearner | None = None):
        super().__init__()
        self.norm_self = nn.LayerNorm(width)
        self.self_attention = SelfAttention(width, heads, dropout)
        # Only some layers can look at the image; in the contrastive pass none do.
        interleaved = visual_width is not None and layout == "interleaved"
        self.norm_cross = nn.LayerNorm(width) if interleaved else None
        self.cross_attention = CrossAttention(width, visual_width, heads, dropout, learner=learner) if interleaved \
            else None
        self.norm_mlp = nn.LayerNorm(width)
        self.mlp = Mlp(width, int(width * mlp_ratio), act_layer=nn.GELU, drop=dropout)
        self.cross_block = (CrossAttentionBlock(width, heads, mlp_ratio, visual_width, dropout, learner)
                            if visual_width is not None and layout == "cross_blocks" else None)

    @property
    def looks_at_image(self) -> bool:
        return self.cross_attention is not None or self.cross_block is not None

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None, causal: bool = False,
                visual_tokens: Tensor | None = None, cache: KVCache | None = None,
                visual_cache: ContextCache | None = None, condition_length: Tensor | None = None) -> Tensor:
        sees_image = visual_tokens is not None or visual_cache is not None
        x = x + self.self_attention(self.norm_self(x), key_padding_mask, causal, cache)
        if self.cross_attention is not None and sees_image:
            x = x + self.cross_attention(self.norm_cross(x), visual_tokens, visual_cache, condition_length)
        x = x + self.mlp(self.norm_mlp(x))
        if self.cross_block is not None and sees_image:
            x = self.cross_block(x, visual_tokens, visual_cache, condition_length)
        return x


class TextDecoder(nn.Module):
    def __init__(self, config: MammutConfig):
        super().__init__()
        self.config = config
        c = config
        self.token_embedding = nn.Embedding(c.vocab_size, c.text_width)
        self.position_embedding = nn.Parameter(torch.zeros(c.context_length, c.text_width))
        self.dropout = nn.Dropout(c.dropout)
        # openMaMMUT maps the visual tokens to the text width once, for every layer.
        self.visual_to_text = nn.Linear(c.vision_width, c.text_width, bias=False) if c.visual_to_text else None
        visual_width = c.text_width if c.visual_to_text else c.vision_width
        cross = c.cross_attention_layer_set
        iterative = c.iterative_fusion_layer_set
        self.layers = nn.ModuleList(
            DecoderLayer(c.text_width, c.text_heads, c.mlp_ratio, visual_width if i in cross else None, c.dropout,
                         c.decoder_layout,
                         TokenLearner(visual_width, c.fusion_tokens, c.fusion_bottleneck, condition_width=c.text_width)
                         if i in iterative else None)
            for i in range(c.text_depth)
        )
        # Tokens learned once, for every cross-attention layer that does not learn its own.
        self.token_learner = (TokenLearner(visual_width, c.fusion_tokens, c.fusion_bottleneck)
                              if c.decoder_fusion != "none" and cross - iterative else None)
        self.conditions_on_text = bool(iterative)
        self.norm = nn.LayerNorm(c.text_width)
        self.lm_head = nn.Linear(c.text_width, c.vocab_size, bias=False)
        self.grad_checkpointing = False
        self._init_weights()
        if c.tie_word_embeddings:
            self.lm_head.weight = self.token_embedding.weight

    def _init_weights(self) -> None:
        std = self.config.text_width ** -0.5
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding, std=0.01)
        nn.init.normal_(self.lm_head.weight, std=std)
        if self.visual_to_text is not None:
            nn.init.normal_(self.visual_to_text.weight, std=self.config.vision_width ** -0.5)
        residual_std = 0.02 / (2 * self.config.text_depth) ** 0.5
        # Token learners keep their own initialisation (the condition's zero start).
        learned = {id(m) for learner in self.layers.modules() if isinstance(learner, TokenLearner)
                   for m in learner.modules()}
        for name, module in self.layers.named_modules():
            if isinstance(module, nn.Linear) and id(module) not in learned:
                # Output projections of residual branches start small (GPT-2 scaling).
                is_residual = name.endswith(("proj", "fc2"))
                nn.init.normal_(module.weight, std=residual_std if is_residual else 0.02)
                nn.init.zeros_(module.bias)

    def resize_position_embedding(self, position_embedding: Tensor) -> Tensor:
        """A text position embedding of another context length (weights trained on shorter or
        longer texts) fitted to this decoder's: the trained positions are kept as they are and the
        positions past them keep their initialisation. Interpolating instead would move every
        trained position; a causal decoder reads position i the same whatever the length."""
        if position_embedding.shape[-1] != self.position_embedding.shape[-1]:
            raise ValueError(f"cannot fit a text position embedding of shape {tuple(position_embedding.shape)} "
                             f"to {tuple(self.position_embedding.shape)}: another width")
        kept = min(len(position_embedding), self.config.context_length)
        log.info("text position embedding: %d trained positions kept, %d start from their initialisation",
                 kept, self.config.context_length - kept)
        resized = self.position_embedding.detach().clone()
        resized[:kept] = position_embedding[:kept]
        return resized

    def embed(self, tokens: Tensor, start: int = 0) -> Tensor:
        T = tokens.shape[1]
        if start + T > self.config.context_length:
            raise ValueError(f"{start + T} tokens exceed the context length {self.config.context_length}")
        return self.dropout(self.token_embedding(tokens) + self.position_embedding[start:start + T])

    def _run_layer(self, layer: DecoderLayer, x: Tensor, **kwargs) -> Tensor:
        if self.grad_checkpointing and self.training:
            return checkpoint(layer, x, use_reentrant=False, **kwargs)
        return layer(x, **kwargs)

    def map_visual(self, visual_tokens: Tensor) -> Tensor:
        """The visual tokens as the cross-attention layers take them."""
        return visual_tokens if self.visual_to_text is None else self.visual_to_text(visual_tokens)

    def layer_contexts(self, visual_tokens: Tensor) -> list[Tensor | None]:
        """What each layer cross-attends to (None: nothing): the mapped visual tokens, or the tokens
        learned once from them; a layer with a learner of its own learns from the mapped tokens."""
        mapped = self.map_visual(visual_tokens)
        learned_once = self.token_learner(mapped) if self.token_learner is not None else mapped
        return [None if not layer.looks_at_image else mapped if layer_learner(layer) is not None else learned_once
                for layer in self.layers]

    def condition_length(self, batch: int, prefix_length: int, prompt_lengths: Tensor | None,
                         device: torch.device) -> Tensor | None:
        """(B,) positions a text-conditioned learner reads: the prefix and the prompt (default:
        the begin-of-text token alone); None without such a learner."""
        if not self.conditions_on_text:
            return None
        prompt = torch.ones(batch, dtype=torch.long, device=device) if prompt_lengths is None else prompt_lengths
        return prompt.to(device) + prefix_length

    def contrastive(self, tokens: Tensor) -> Tensor:
        """Contrastive pass: bidirectional attention over non-padding tokens (over every token,
        for openMaMMUT's ``text_pooling: mean_all``), no image. (B, T, C)"""
        key_padding_mask = None if self.config.text_pooling == "mean_all" else tokens != self.config.pad_id
        x = self.embed(tokens)
        for layer in self.layers:
            x = self._run_layer(layer, x, key_padding_mask=key_padding_mask)
        return self.norm(x)

    def generative(self, tokens: Tensor, visual_tokens: Tensor, prefix: Tensor | None = None,
                   last_only: bool = False, prompt_lengths: Tensor | None = None, logits: bool = True) -> Tensor:
        """Generative pass: causal self-attention and cross-attention to the image. Logits (B, T, V),
        or (B, 1, V) for the last position alone with ``last_only``; with ``logits=False`` the
        final hidden states (B, T, text_width) that ``lm_head`` turns into logits.

        ``prompt_lengths`` (B,): each row's leading tokens that text-conditioned fusion may read
        (the prompt: a question and the begin-of-text token); default the begin-of-text token.

        Padding sits after the end of each text, so the causal mask alone keeps real tokens
        from seeing it; positions after the end are ignored by the loss.

        ``prefix`` (B, P, text_width): embeddings placed before the first token, without
        position embeddings (the eP-ALM prompt and visual tokens, see ``VisualPrefix``).
        Every token attends to them; no logits are returned for them.
        """
        x = self.embed(tokens)
        if prefix is not None:
            x = torch.cat([prefix.to(x.dtype), x], dim=1)
        contexts = self.layer_contexts(visual_tokens)
        condition_length = self.condition_length(x.shape[0], 0 if prefix is None else prefix.shape[1],
                                                 prompt_lengths, x.device)
        for layer, context in zip(self.layers, contexts):
            x = self._run_layer(layer, x, causal=True, visual_tokens=context, condition_length=condition_length)
        if prefix is not None:
            x = x[:, prefix.shape[1]:]
        if last_only:  # generation without a cache needs the next token's logits alone
            x = x[:, -1:]
        x = self.norm(x)
        return self.lm_head(x) if logits else x

    def start_decoding(self, visual_tokens: Tensor, max_length: int, prefix: Tensor | None = None,
                       static: bool = False) -> DecoderState:
        """Fresh caches for incremental decoding of up to ``max_length`` tokens. The visual keys
        and values are computed once, at the first step, and the prefix, if any, is run through
        the layers now. ``static`` caches keep every step's shapes fixed, for a compiled step
        (``CompiledDecoding``)."""
        prefix_length = 0 if prefix is None else prefix.shape[1]
        cache_type = StaticKVCache if static else KVCache
        caches = [cache_type(prefix_length + max_length) for _ in self.layers]
        visual = [None if context is None else ContextCache(context) for context in self.layer_contexts(visual_tokens)]
        state = DecoderState(caches, visual)
        if prefix is not None and self.conditions_on_text:
            state.pending_prefix = prefix  # runs with the prompt, which the condition reads too
        elif prefix is not None:
            self._extend(prefix, state)
            state.prefix_length = prefix_length
        return state

    def decode_step(self, tokens: Tensor, state: DecoderState) -> Tensor:
        """Logits (B, T, V) for new tokens that follow the cached ones."""
        return self.continue_decoding(self.embed(tokens, start=state.tokens_seen), state)

    def continue_decoding(self, x: Tensor, state: DecoderState) -> Tensor:
        """``decode_step`` after the embedding: the part ``CompiledDecoding`` compiles."""
        prefix = state.pending_prefix
        if prefix is None:
            return self.lm_head(self.norm(self._extend(x, state)))
        state.pending_prefix = None
        x = self._extend(torch.cat([prefix.to(x.dtype), x], dim=1), state)[:, prefix.shape[1]:]
        state.prefix_length = prefix.shape[1]
        return self.lm_head(self.norm(x))

    def _extend(self, x: Tensor, state: DecoderState) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x, causal=True, cache=state.self_attention[i], visual_cache=state.visual[i])
        return x


def layer_learner(layer: DecoderLayer) -> TokenLearner | None:
    """The token learner of a layer's own cross-attention, if it has one."""
    attention = layer.cross_attention if layer.cross_attention is not None else (
        layer.cross_block.cross_attention if layer.cross_block is not None else None)
    return None if attention is None else attention.learner
