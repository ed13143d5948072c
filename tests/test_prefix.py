"""Decoding after a prefix: the eP-ALM prefix, prompts of different lengths, per-layer visual tokens."""

import pytest
import torch

from mammut.model import GenerationConfig, Mammut, PrefixConfig, VisualPrefix, generate, generate_after_prompts

from test_model import BOS, PAD, random_tokens, tiny_config


@pytest.fixture
def model():
    torch.manual_seed(0)
    return Mammut(tiny_config()).eval()


@pytest.fixture
def g():
    return torch.Generator().manual_seed(1)


def prefix_for(model, images, layers=(-2, -1), prompt_tokens=3):
    torch.manual_seed(2)
    prefix = VisualPrefix(PrefixConfig(prompt_tokens, list(layers)), model.config.vision_width, model.config.text_width)
    # Large enough to change what a random decoder generates.
    torch.nn.init.normal_(prefix.prompt, std=1.0)
    torch.nn.init.normal_(prefix.projection.weight, std=1.0)
    visual, layer_tokens = model.vision.forward_with_layers(images, list(layers))
    return visual, prefix(layer_tokens)


def test_per_layer_tokens_are_pooled_block_outputs_in_block_order(model, g):
    images = torch.randn(2, 3, 32, 32, generator=g)
    visual, layer_tokens = model.vision.forward_with_layers(images, [-1, 0])
    assert layer_tokens.shape == (2, 2, model.config.vision_width)
    torch.testing.assert_close(visual, model.encode_image(images))
    # Block -1 is the last block: its normed output is the encoder's output.
    torch.testing.assert_close(layer_tokens[:, 1], model.vision.pool(visual))
    assert not torch.allclose(layer_tokens[:, 0], layer_tokens[:, 1])
    with pytest.raises(ValueError, match="block indices"):
        model.vision.forward_with_layers(images, [5])


def test_prefix_reaches_every_token_and_stays_out_of_the_logits(model, g):
    images = torch.randn(2, 3, 32, 32, generator=g)
    visual, prefix = prefix_for(model, images)
    assert prefix.shape == (2, 3 + 2, model.config.text_width)
    tokens = random_tokens(2, 6, g)
    with_prefix = model.caption_logits(tokens, visual, prefix)
    assert with_prefix.shape == (2, 6, model.config.vocab_size)
    without = model.caption_logits(tokens, visual)
    assert not torch.allclose(with_prefix[:, 0], without[:, 0])
    # Still causal after the prefix: a later token leaves earlier logits alone.
    changed = tokens.clone()
    changed[:, 4] = (changed[:, 4] + 1) % model.config.vocab_size
    torch.testing.assert_close(model.caption_logits(changed, visual, prefix)[:, :4], with_prefix[:, :4])


@pytest.mark.parametrize("beams", [1, 3])
def test_kv_cache_gives_the_same_tokens_after_a_prefix(model, g, beams):
    images = torch.randn(3, 3, 32, 32, generator=g)
    visual, prefix = prefix_for(model, images)
    prompt = random_tokens(3, 5, g)[:, :4]
    settings = dict(max_new_tokens=8, num_beams=beams)
    cached = generate(model, visual, prompt, GenerationConfig(use_cache=True, **settings), prefix)
    uncached = generate(model, visual, prompt, GenerationConfig(use_cache=False, **settings), prefix)
    assert torch.equal(cached, uncached)


def test_cached_decoding_after_a_prefix_gives_the_logits_of_the_full_pass(model, g):
    images = torch.randn(2, 3, 32, 32, generator=g)
    visual, prefix = prefix_for(model, images)
    tokens = random_tokens(2, 6, g)
    state = model.decoder.start_decoding(visual, max_length=6, prefix=prefix)
    stepwise = torch.cat([model.decoder.decode_step(tokens[:, :3], state),
                          *(model.decoder.decode_step(tokens[:, i:i + 1], state) for i in range(3, 6))], dim=1)
    torch.testing.assert_close(stepwise, model.caption_logits(tokens, visual, prefix), atol=1e-5, rtol=1e-4)


def test_prompts_of_different_lengths_decode_as_if_alone(model, g):
    images = torch.randn(4, 3, 32, 32, generator=g)
    visual, prefix = prefix_for(model, images)
    lengths = torch.tensor([3, 5, 3, 2])
    prompts = random_tokens(4, 7, g)
    prompts[:, 0] = BOS
    for row, n in enumerate(lengths.tolist()):
        prompts[row, n:] = PAD
    config = GenerationConfig(max_new_tokens=6)
    together = generate_after_prompts(model, visual, prompts, lengths, config, prefix)
    for row, n in enumerate(lengths.tolist()):
        alone = generate(model, visual[row:row + 1], prompts[row:row + 1, :n], config, prefix[row:row + 1])[0]
        assert torch.equal(together[row, :alone.shape[0]], alone)
        assert (together[row, alone.shape[0]:] == PAD).all()
