"""Text generation from the generative pass: greedy and beam search, with or without a KV cache.

Both start from a prompt (the begin-of-text token for captions, or a question prefix) and stop
a sequence at its end-of-text token. Without the cache every step re-runs the whole prefix;
the results are the same, which the tests check, and bench/generate.py measures the speed-up.
With ``compile`` the cached steps after the prompt run through ``CompiledDecoding``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .compiled_decoding import compiled_decoding
from .mammut import Mammut


@dataclass
class GenerationConfig:
    max_new_tokens: int = 20
    min_new_tokens: int = 0  # the end-of-text token is masked out before this many tokens
    num_beams: int = 1  # 1: greedy
    length_penalty: float = 1.0  # beam score = sum log p / length ** length_penalty
    use_cache: bool = True
    # Compile the cached decoding step (``CompiledDecoding``): 1.8 to 2.4x faster generation at
    # batches of 1 to 8 on a CPU, none from 32 up (README), after a compilation of 5 to 35 s per
    # batch shape at the tiny preset, again whenever the weights have changed. Meant for predict.
    compile: bool = False

    def __post_init__(self):
        if self.compile and not self.use_cache:
            raise ValueError("generation compile: true compiles the cached decoding step; it needs use_cache: true")


class _Stepper:
    """Next-token logits for a batch of growing sequences, incrementally or from scratch."""

    def __init__(self, model: Mammut, visual_tokens: Tensor, prompt_length: int, max_length: int,
                 config: GenerationConfig, prefix: Tensor | None):
        self.model = model
        self.visual_tokens = visual_tokens
        self.prefix = prefix
        # Text-conditioned fusion reads the prompt alone, with or without the cache.
        self.prompt_lengths = torch.full((visual_tokens.shape[0],), prompt_length, device=visual_tokens.device)
        # Weights cannot change within one generate call: check them once, not at every step.
        compiled = config.use_cache and config.compile
        self.compiled_step = compiled_decoding.for_weights_of(model.decoder) if compiled else None
        self.state = (model.decoder.start_decoding(visual_tokens, max_length, prefix, static=compiled)
                      if config.use_cache else None)
        self.fed = 0  # tokens already in the cache

    def next_logits(self, sequences: Tensor) -> Tensor:
        decoder = self.model.decoder
        if self.state is None:
            return decoder.generative(sequences, self.visual_tokens, self.prefix, last_only=True,
                                      prompt_lengths=self.prompt_lengths)[:, -1]
        new = sequences[:, self.fed:]
        # The prompt goes through eagerly: it also fills the visual caches, and compiling its
        # shape would buy little for one call.
        seen, self.fed = self.fed, sequences.shape[1]
        if self.compiled_step is not None and seen > 0:
            # ``seen`` is the position, kept here so that no step reads it back from the cache.
            return self.compiled_step(decoder, decoder.embed(new, start=seen), self.state)[:, -1]
        return decoder.decode_step(new, self.state)[:, -1]

    def reorder(self, batch_indices: Tensor) -> None:
        """batch_indices only permute rows within each image's group of beams."""
        if self.state is not None:
            self.state.reorder(batch_indices)


def _mask_end(logits: Tensor, step: int, config: GenerationConfig, eos_id: int) -> Tensor:
    if step < config.min_new_tokens:
        logits = logits.clone()
        logits[:, eos_id] = float("-inf")
    return logits


@torch.no_grad()
def generate(model: Mammut, visual_tokens: Tensor, prompt: Tensor | None = None,
             config: GenerationConfig | None = None, prefix: Tensor | None = None) -> Tensor:
    """Generated tokens (B, L) after the prompt, ending with eos and right-padded with pad.

    visual_tokens: (B, N, C) from ``model.encode_image``. prompt: (B, P) token ids, all rows of
    the same length (default: the begin-of-text token alone). prefix: (B, P', text_width)
    embeddings before the prompt (see ``TextDecoder.generative``).
    """
    config = config or GenerationConfig()
    c = model.config
    B = visual_tokens.shape[0]
    if prompt is None:
        prompt = torch.full((B, 1), c.bos_id, dtype=torch.long, device=visual_tokens.device)
    max_new = min(config.max_new_tokens, c.context_length - prompt.shape[1])
    if max_new <= 0:
        raise ValueError(f"a prompt of {prompt.shape[1]} tokens leaves no room in context {c.context_length}")
    if config.num_beams == 1:
        return _greedy(model, visual_tokens, prompt, max_new, config, prefix)
    return _beam_search(model, visual_tokens, prompt, max_new, config, prefix)


@torch.no_grad()
def generate_after_prompts(model: Mammut, visual_tokens: Tensor, prompts: Tensor, prompt_lengths: Tensor,
                           config: GenerationConfig | None = None, prefix: Tensor | None = None) -> Tensor:
    """``generate`` for prompts of different lengths, e.g. VQA questions: (B, L) answer tokens.

    prompts: (B, P) right-padded token ids; prompt_lengths: (B,) their real lengths. Rows with
    equal lengths are generated together, so no row ever attends to another's padding.
    """
    config = config or GenerationConfig()
    pad_id = model.config.pad_id
    answers: list[Tensor | None] = [None] * prompts.shape[0]
    for length in prompt_lengths.unique().tolist():
        rows = (prompt_lengths == length).nonzero().flatten()
        generated = generate(model, visual_tokens[rows], prompts[rows, :length], config,
                             None if prefix is None else prefix[rows])
        for row, tokens in zip(rows.tolist(), generated):
            answers[row] = tokens
    width = max(tokens.shape[0] for tokens in answers)
    out = prompts.new_full((prompts.shape[0], width), pad_id)
    for row, tokens in enumerate(answers):
        out[row, :tokens.shape[0]] = tokens
    return out


def _greedy(model: Mammut, visual_tokens: Tensor, prompt: Tensor, max_new: int, config: GenerationConfig,
            prefix: Tensor | None) -> Tensor:
    c = model.config
    stepper = _Stepper(model, visual_tokens, prompt.shape[1], prompt.shape[1] + max_new, config, prefix)
    sequences = prompt
    finished = torch.zeros(prompt.shape[0], dtype=torch.bool, device=prompt.device)
    for step in range(max_new):
        logits = _mask_end(stepper.next_logits(sequences), step, config, c.eos_id)
        next_token = logits.argmax(dim=-1)
        next_token = torch.where(finished, torch.full_like(next_token, c.pad_id), next_token)
        sequences = torch.cat([sequences, next_token[:, None]], dim=1)
        finished |= next_token == c.eos_id
        if finished.all():
            break
    return sequences[:, prompt.shape[1]:]


def _beam_search(model: Mammut, visual_tokens: Tensor, prompt: Tensor, max_new: int, config: GenerationConfig,
                 prefix: Tensor | None) -> Tensor:
    """Beam search over B x K hypotheses. A finished hypothesis carries on with padding at no
    cost, so it competes with unfinished ones on its final score until the search ends."""
    c = model.config
    B, K = prompt.shape[0], config.num_beams
    device = prompt.device
    # Every beam of an example starts identical: expand, and give all but one -inf score so
    # the first step does not pick K copies of the same token.
    visual_tokens = visual_tokens.repeat_interleave(K, dim=0)
    sequences = prompt.repeat_interleave(K, dim=0)  # (B*K, P)
    scores = torch.zeros(B, K, device=device)
    scores[:, 1:] = float("-inf")
    lengths = torch.zeros(B * K, device=device)
    finished = torch.zeros(B * K, dtype=torch.bool, device=device)
    prefix = None if prefix is None else prefix.repeat_interleave(K, dim=0)
    stepper = _Stepper(model, visual_tokens, prompt.shape[1], prompt.shape[1] + max_new, config, prefix)
    for step in range(max_new):
        logits = _mask_end(stepper.next_logits(sequences), step, config, c.eos_id)
        log_probs = logits.float().log_softmax(dim=-1)  # (B*K, V)
        V = log_probs.shape[-1]
        # Finished hypotheses may only extend with padding, which costs nothing.
        log_probs[finished] = float("-inf")
        log_probs[finished, c.pad_id] = 0.0
        candidates = (scores.view(B * K, 1) + log_probs).view(B, K * V)
        scores, flat = candidates.topk(K, dim=1)  # (B, K)
        beam = flat // V
        token = flat % V
        source = (beam + torch.arange(B, device=device)[:, None] * K).view(-1)  # rows of (B*K)
        stepper.reorder(source)
        sequences = torch.cat([sequences.index_select(0, source), token.view(-1, 1)], dim=1)
        finished = finished.index_select(0, source)
        lengths = lengths.index_select(0, source) + (~finished).float()
        finished |= token.view(-1) == c.eos_id
        if finished.all():
            break
    normalised = scores / lengths.view(B, K).clamp(min=1) ** config.length_penalty
    best = normalised.argmax(dim=1) + torch.arange(B, device=device) * K
    return sequences.index_select(0, best)[:, prompt.shape[1]:]
