"""Compiled decoding: fixed-shape KV caches, and a compiled step that never runs stale weights."""

import pytest
import torch
from torch._dynamo.utils import counters

from mammut.model import GenerationConfig, Mammut, generate
from mammut.model.compiled_decoding import WeightsSnapshot, compiled_decoding

from conftest import needs_compiler
from test_model import random_tokens, tiny_config
from test_prefix import prefix_for


def make_model(seed):
    """Untied embeddings: a random tied model tends to echo its begin-of-text token, and
    captions that never change could not tell fresh weights from stale ones."""
    torch.manual_seed(seed)
    return Mammut(tiny_config(tie_word_embeddings=False)).eval()


@pytest.fixture
def g():
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize("with_prefix", [False, True])
def test_static_cache_steps_give_the_logits_of_the_full_pass(g, with_prefix):
    model = make_model(0)
    images = torch.randn(2, 3, 32, 32, generator=g)
    visual, prefix = prefix_for(model, images) if with_prefix else (model.encode_image(images), None)
    tokens = random_tokens(2, 7, g)
    state = model.decoder.start_decoding(visual, max_length=9, prefix=prefix, static=True)
    # Slots not yet written hold zeros; the mask must keep every query off them and off the future.
    stepwise = torch.cat([model.decoder.decode_step(tokens[:, :3], state),
                          *(model.decoder.decode_step(tokens[:, i:i + 1], state) for i in range(3, 7))], dim=1)
    torch.testing.assert_close(stepwise, model.caption_logits(tokens, visual, prefix), atol=1e-5, rtol=1e-4)
    assert state.tokens_seen == 7


def test_weights_snapshot_notices_every_kind_of_weight_update():
    model = make_model(0)
    decoder = model.decoder
    snapshot = WeightsSnapshot(decoder)
    assert snapshot.matches(decoder)
    assert not snapshot.matches(make_model(0).decoder)  # equal weights, but another decoder

    optimizer = torch.optim.AdamW(decoder.parameters(), lr=1e-3)
    tokens = random_tokens(2, 5, torch.Generator().manual_seed(1))
    model.caption_logits(tokens, torch.randn(2, 16, 32)).sum().backward()
    optimizer.step()
    assert not snapshot.matches(decoder)

    # Writes through .data leave the version counter alone, and a permutation keeps every norm.
    for write in (lambda w: w.mul_(2.0), lambda w: w.copy_(w.flip(0))):
        snapshot = WeightsSnapshot(decoder)
        with torch.no_grad():
            write(decoder.lm_head.weight.data)
        assert not snapshot.matches(decoder)

    snapshot = WeightsSnapshot(decoder)
    decoder.load_state_dict(make_model(1).decoder.state_dict())
    assert not snapshot.matches(decoder)


def test_compile_without_the_cache_is_refused():
    with pytest.raises(ValueError, match="use_cache"):
        GenerationConfig(use_cache=False, compile=True)


def greedy_and_beam(model, visual, compile, prompt=None, prefix=None):
    configs = [GenerationConfig(max_new_tokens=8, num_beams=beams, compile=compile) for beams in (1, 3)]
    return [generate(model, visual, prompt, config, prefix) for config in configs]


def assert_same_tokens(compiled, eager):
    for a, b in zip(compiled, eager):
        assert torch.equal(a, b)


@pytest.mark.slow
@needs_compiler
def test_compiled_generation_gives_the_tokens_of_eager_generation(g, without_autotuning):
    model = make_model(0)
    images = torch.randn(3, 3, 32, 32, generator=g)
    visual = model.encode_image(images)
    assert_same_tokens(greedy_and_beam(model, visual, True), greedy_and_beam(model, visual, False))
    assert len(set(greedy_and_beam(model, visual, False)[0].flatten().tolist())) > 3
    # A longer prompt after an eP-ALM prefix, as VQA decodes.
    visual, prefix = prefix_for(model, images)
    prompt = random_tokens(3, 5, g)[:, :4]
    assert_same_tokens(greedy_and_beam(model, visual, True, prompt, prefix),
                       greedy_and_beam(model, visual, False, prompt, prefix))


@pytest.mark.slow
@needs_compiler
def test_compiled_generation_follows_the_weights_as_they_change(g, without_autotuning):
    """Compiled graphs hold frozen weights; a stale graph would keep the old captions."""
    model, other = make_model(0), make_model(1)
    visual = model.encode_image(torch.randn(4, 3, 32, 32, generator=g))
    greedy = GenerationConfig(max_new_tokens=8, min_new_tokens=8)

    compiled = GenerationConfig(max_new_tokens=8, min_new_tokens=8, compile=True)

    def check(expect_change_from=None):
        eager = generate(model, visual, config=greedy)
        assert torch.equal(generate(model, visual, config=compiled), eager)
        if expect_change_from is not None:
            assert not torch.equal(eager, expect_change_from), "the update should change the captions"
        return eager

    first = check()
    optimizer = torch.optim.AdamW(model.decoder.parameters(), lr=0.05)
    tokens = torch.cat([torch.full((4, 1), 1), generate(model, visual, config=greedy)], dim=1)
    # A step that lowers the likelihood of the current captions.
    model.caption_logits(tokens[:, :-1], visual).log_softmax(-1).gather(-1, tokens[:, 1:, None]).mean().backward()
    optimizer.step()
    after_step = check(expect_change_from=first)
    with torch.no_grad():
        model.decoder.lm_head.weight.data.copy_(other.decoder.lm_head.weight)
    after_data = check(expect_change_from=after_step)
    # Another model in between, then back: each must decode with its own weights.
    assert torch.equal(generate(other, visual, config=compiled), generate(other, visual, config=greedy))
    assert torch.equal(generate(model, visual, config=compiled), after_data)


@pytest.mark.slow
@needs_compiler
def test_the_graph_holds_the_weights_it_was_compiled_with(g, monkeypatch, without_autotuning):
    """Why the weights check exists, and proof that generation runs the frozen graph: with the
    check disabled, a changed model keeps decoding with its old weights after the prompt."""
    model, other = make_model(0), make_model(1)
    visual = model.encode_image(torch.randn(4, 3, 32, 32, generator=g))
    compiled = GenerationConfig(max_new_tokens=8, min_new_tokens=8, compile=True)
    before = generate(model, visual, config=compiled)
    monkeypatch.setattr(WeightsSnapshot, "matches", lambda self, module: True)
    with torch.no_grad():
        model.decoder.lm_head.weight.copy_(other.decoder.lm_head.weight)
    eager_after = generate(model, visual, config=GenerationConfig(max_new_tokens=8, min_new_tokens=8))
    assert not torch.equal(eager_after, before)
    # The prompt step runs eagerly with the new weights, every later step with the old ones.
    stale = generate(model, visual, config=compiled)
    assert torch.equal(stale[:, 0], eager_after[:, 0])
    assert not torch.equal(stale, eager_after)


@pytest.mark.slow
@needs_compiler
def test_compiled_step_under_bf16_autocast_gives_the_logits_of_the_eager_step(g):
    model = make_model(0)
    visual = model.encode_image(torch.randn(3, 3, 32, 32, generator=g))
    tokens = random_tokens(3, 7, g)
    decoder = model.decoder
    logits = {}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for compiled in (False, True):
            step = compiled_decoding.for_weights_of(decoder) if compiled else type(decoder).continue_decoding
            state = decoder.start_decoding(visual, max_length=7, static=True)
            steps = [decoder.decode_step(tokens[:, :1], state)]
            steps += [step(decoder, decoder.embed(tokens[:, i:i + 1], start=i), state) for i in range(1, 7)]
            logits[compiled] = torch.cat(steps, dim=1).float()
    torch.testing.assert_close(logits[True], logits[False], atol=0.05, rtol=0.02)


@pytest.mark.slow
@needs_compiler
def test_past_the_recompile_limit_the_step_runs_eagerly_with_the_same_tokens(g, without_autotuning):
    model = make_model(2)
    config = GenerationConfig(max_new_tokens=6, min_new_tokens=6, compile=True)
    graphs = counters["stats"]["unique_graphs"]
    with torch._dynamo.config.patch(recompile_limit=1):
        for batch in (2, 3):  # the second batch size would need a second graph
            visual = model.encode_image(torch.randn(batch, 3, 32, 32, generator=g))
            assert torch.equal(generate(model, visual, config=config),
                               generate(model, visual, config=GenerationConfig(max_new_tokens=6, min_new_tokens=6)))
    assert counters["stats"]["unique_graphs"] == graphs + 1
