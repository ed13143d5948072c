"""The MaMMUT model: construction, the two decoder passes, losses and cached generation."""

import math

import pytest
import torch
from safetensors.torch import save_file

from mammut.model import PRESETS, ContrastiveLoss, GenerationConfig, Mammut, caption_loss, generate, preset

PAD, BOS, EOS = 0, 1, 2
VOCAB = 64


def tiny_config(**overrides):
    shape = dict(image_size=32, patch_size=8, vision_width=32, vision_depth=2, vision_heads=2,
                 vocab_size=VOCAB, context_length=16, text_width=32, text_depth=3, text_heads=2,
                 cross_attention_layers=[1, 2], embed_dim=24)
    return preset("tiny", **{**shape, **overrides})


def random_tokens(batch, length, generator, lengths=None):
    tokens = torch.randint(5, VOCAB, (batch, length), generator=generator)
    tokens[:, 0] = BOS
    lengths = lengths or [length] * batch
    for row, n in enumerate(lengths):
        tokens[row, n - 1] = EOS
        tokens[row, n:] = PAD
    return tokens


def favour_eos(model, bias):
    """Raise the end-of-text logit by ``bias`` at every step."""
    def hook(module, inputs, logits):
        logits[..., EOS] += bias
        return logits
    model.decoder.lm_head.register_forward_hook(hook)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return Mammut(tiny_config()).eval()


@pytest.fixture
def g():
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize("name", ["tiny", "small", "base"])
def test_every_parameter_is_finite_at_construction(name):
    model = Mammut(preset(name, vocab_size=512))
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    assert not bad
    # A projection left uninitialised would come out with huge or zero values.
    assert 0 < model.text_projection.weight.std() < 1


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_consistent(name):
    config = PRESETS[name]
    assert config.cross_attention_layer_set <= set(range(config.text_depth))
    assert config.image_size % config.patch_size == 0


def test_forward_shapes_and_unit_embeddings(model, g):
    images = torch.randn(3, 3, 32, 32, generator=g)
    tokens = random_tokens(3, 10, g, [10, 6, 4])
    out = model(images, tokens)
    assert out.image_embedding.shape == out.text_embedding.shape == (3, 24)
    assert out.caption_logits.shape == (3, 9, VOCAB)
    torch.testing.assert_close(out.image_embedding.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(out.text_embedding.norm(dim=-1), torch.ones(3))
    assert math.isclose(out.logit_scale.item(), 1 / 0.07, rel_tol=1e-5)


def test_contrastive_pass_never_sees_the_image(model, g):
    tokens = random_tokens(2, 10, g, [10, 7])
    a = model(torch.randn(2, 3, 32, 32, generator=g), tokens)
    b = model(torch.randn(2, 3, 32, 32, generator=g), tokens)
    assert torch.equal(a.text_embedding, b.text_embedding)
    # ... while the generative pass does.
    assert not torch.allclose(a.caption_logits, b.caption_logits)
    assert not torch.allclose(a.image_embedding, b.image_embedding)


def test_contrastive_pass_is_bidirectional_and_ignores_padding(model, g):
    tokens = random_tokens(1, 8, g)
    hidden = model.decoder.contrastive(tokens)
    changed = tokens.clone()
    changed[0, 6] = (changed[0, 6] + 1 - 5) % (VOCAB - 5) + 5
    # A later token changes the earlier positions: attention is not causal.
    assert not torch.allclose(hidden[0, 1], model.decoder.contrastive(changed)[0, 1])
    padded = torch.cat([tokens, torch.full((1, 5), PAD)], dim=1)
    torch.testing.assert_close(model.text_embedding(padded), model.text_embedding(tokens))


def test_generative_pass_is_causal(model, g):
    images = torch.randn(1, 3, 32, 32, generator=g)
    visual = model.encode_image(images)
    tokens = random_tokens(1, 12, g)
    changed = tokens.clone()
    changed[0, 7] = (changed[0, 7] + 1 - 5) % (VOCAB - 5) + 5
    before = model.caption_logits(tokens, visual)
    after = model.caption_logits(changed, visual)
    torch.testing.assert_close(before[:, :7], after[:, :7], rtol=0, atol=0)
    assert not torch.allclose(before[:, 7:], after[:, 7:])


def test_cross_attention_only_in_configured_layers():
    model = Mammut(tiny_config(cross_attention_layers=[0]))
    assert [layer.cross_attention is not None for layer in model.decoder.layers] == [True, False, False]
    every = Mammut(tiny_config(cross_attention_layers=None))
    assert all(layer.cross_attention is not None for layer in every.decoder.layers)
    with pytest.raises(ValueError, match="outside"):
        tiny_config(cross_attention_layers=[3])


@pytest.mark.parametrize("beams", [1, 3])
@pytest.mark.parametrize("prompt_length", [1, 4])
def test_kv_cache_gives_the_same_tokens(model, g, beams, prompt_length):
    visual = model.encode_image(torch.randn(4, 3, 32, 32, generator=g))
    prompt = random_tokens(4, prompt_length + 1, g)[:, :prompt_length] if prompt_length > 1 else None
    settings = dict(max_new_tokens=10, num_beams=beams)
    cached = generate(model, visual, prompt, GenerationConfig(use_cache=True, **settings))
    uncached = generate(model, visual, prompt, GenerationConfig(use_cache=False, **settings))
    assert cached.shape[0] == 4 and cached.shape[1] <= 10
    assert torch.equal(cached, uncached)


def test_generation_stops_at_eos_and_pads_after(model, g):
    visual = model.encode_image(torch.randn(6, 3, 32, 32, generator=g))
    favour_eos(model, 4.0)  # some rows end early, others run to max_new_tokens
    for beams in (1, 2):
        out = generate(model, visual, config=GenerationConfig(max_new_tokens=12, num_beams=beams))
        assert (out == EOS).any(dim=1).any()
        for row in out.tolist():
            if EOS in row:
                end = row.index(EOS)
                assert all(t == PAD for t in row[end + 1:])
            assert PAD not in row[:row.index(EOS) if EOS in row else len(row)]


def test_min_new_tokens_holds_off_eos(model, g):
    visual = model.encode_image(torch.randn(3, 3, 32, 32, generator=g))
    favour_eos(model, 1e3)  # eos would win every step
    assert (generate(model, visual, config=GenerationConfig(max_new_tokens=8))[:, 0] == EOS).all()
    for beams in (1, 2):
        out = generate(model, visual, config=GenerationConfig(max_new_tokens=8, min_new_tokens=5, num_beams=beams))
        assert (out[:, :5] != EOS).all()


def test_beam_search_scores_at_least_as_well_as_greedy(model, g):
    visual = model.encode_image(torch.randn(4, 3, 32, 32, generator=g))

    def log_likelihood(generated):
        tokens = torch.cat([torch.full((4, 1), BOS), generated], dim=1)
        logp = model.caption_logits(tokens[:, :-1], visual).log_softmax(-1)
        picked = logp.gather(-1, tokens[:, 1:, None])[..., 0]
        return (picked * (tokens[:, 1:] != PAD)).sum(dim=1)

    greedy = generate(model, visual, config=GenerationConfig(max_new_tokens=6, min_new_tokens=6))
    beam = generate(model, visual, config=GenerationConfig(max_new_tokens=6, min_new_tokens=6, num_beams=4,
                                                           length_penalty=0.0))
    assert (log_likelihood(beam) >= log_likelihood(greedy) - 1e-5).all()


def test_infonce_matches_the_formula_and_rewards_alignment():
    torch.manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    scale = torch.tensor(10.0)
    logits = scale * images @ texts.T
    labels = torch.arange(5)
    expected = (torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.T, labels)) / 2
    torch.testing.assert_close(ContrastiveLoss()(images, texts, scale), expected)
    assert ContrastiveLoss()(images, images, torch.tensor(100.0)) < 1e-3


def test_focal_contrastive_loss_matches_ro_vit():
    torch.manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    scale, gamma = torch.tensor(5.0), 2.0
    logits = scale * images @ texts.T
    p = torch.sigmoid(logits)
    p_t = torch.where(torch.eye(4, dtype=torch.bool), p, 1 - p)
    expected = (-(1 - p_t) ** gamma * p_t.log()).sum() / 4
    torch.testing.assert_close(ContrastiveLoss("focal", focal_gamma=gamma)(images, texts, scale), expected)


def test_caption_loss_ignores_padding():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, VOCAB)
    targets = torch.tensor([[7, 8, EOS, PAD, PAD], [9, EOS, PAD, PAD, PAD]])
    loss = caption_loss(logits, targets, PAD)
    real = targets != PAD
    expected = torch.nn.functional.cross_entropy(logits[real], targets[real])
    torch.testing.assert_close(loss, expected)
    noisy = logits.clone()
    noisy[~real] = torch.randn_like(noisy[~real]) * 100
    torch.testing.assert_close(caption_loss(noisy, targets, PAD), loss)


def test_vision_weights_load_from_a_safetensors_file(tmp_path):
    torch.manual_seed(0)
    source = Mammut(tiny_config())
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in source.vision.vit.state_dict().items()}, str(path))
    torch.manual_seed(1)
    loaded = Mammut(tiny_config(vision_weights=str(path)))
    for (name, a), (_, b) in zip(source.vision.vit.state_dict().items(), loaded.vision.vit.state_dict().items()):
        assert torch.equal(a, b), name
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        Mammut(tiny_config(vision_weights=str(tmp_path / "missing.safetensors")))


@pytest.mark.parametrize("bf16", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients(g, bf16):
    images = torch.randn(2, 3, 32, 32, generator=g)
    tokens = random_tokens(2, 8, g, [8, 5])
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = Mammut(tiny_config()).train()
        model.set_grad_checkpointing(checkpointing)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(images, tokens)
            loss = ContrastiveLoss()(out.image_embedding, out.text_embedding, out.logit_scale) + caption_loss(
                out.caption_logits, tokens[:, 1:], PAD)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)


@pytest.mark.parametrize("overlap", [0, 2])
def test_overlapping_patches_see_past_their_border_and_keep_the_token_grid(overlap, g):
    model = Mammut(tiny_config(patch_overlap=overlap))
    images = torch.randn(1, 3, 32, 32, generator=g)
    changed = images.clone()
    changed[0, :, 3, 8] += 1.0  # the first column of patch (0, 1), next to patch (0, 0)
    tokens = model.vision.vit.patch_embed(images)
    moved = (model.vision.vit.patch_embed(changed) - tokens).abs().amax(dim=-1).reshape(-1)
    assert tokens.shape == (1, 16, 32)  # a 4 x 4 grid of 8-pixel patches either way
    assert moved[1] > 0 and moved[2:].eq(0).all()
    assert (moved[0] > 0) == (overlap > 0)
    with pytest.raises(ValueError, match="patch_overlap"):
        tiny_config(patch_overlap=-1)


def test_overlapping_patches_start_from_loaded_weights(tmp_path):
    torch.manual_seed(0)
    source = Mammut(tiny_config())
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in source.vision.vit.state_dict().items()}, str(path))
    loaded = Mammut(tiny_config(vision_weights=str(path), patch_overlap=2))
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded.encode_image(images), source.encode_image(images))


def test_conv_stem_keeps_the_token_grid_sees_neighbours_and_trains(g):
    model = Mammut(tiny_config(patch_embedding="conv_stem")).eval()  # BatchNorm: running statistics
    images = torch.randn(1, 3, 32, 32, generator=g)
    changed = images.clone()
    changed[0, :, 3, 7] += 1.0  # the last column of patch (0, 0), next to patch (0, 1)
    tokens = model.vision.vit.patch_embed(images)
    moved = (model.vision.vit.patch_embed(changed) - tokens).abs().amax(dim=-1).reshape(-1)
    assert tokens.shape == (1, 16, 32)  # the same 4 x 4 grid as 8-pixel patches
    # Token (i, j) sees pixels 8i-7..8i+7 by 8j-7..8j+7: both neighbours, but not rows 2 and 3.
    assert moved[0] > 0 and moved[1] > 0 and moved[8:].eq(0).all()
    model.train()
    model.encode_image(torch.randn(2, 3, 32, 32, generator=g)).square().mean().backward()
    assert model.vision.vit.patch_embed.proj[0].weight.grad.abs().sum() > 0  # the first 3x3 convolution
    with pytest.raises(ValueError, match="power-of-two"):
        Mammut(tiny_config(patch_embedding="conv_stem", image_size=36, patch_size=6))
    with pytest.raises(ValueError, match="patch_overlap"):
        tiny_config(patch_embedding="conv_stem", patch_overlap=2)
