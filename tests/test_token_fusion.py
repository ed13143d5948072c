"""Compact token fusion (mammut.model.token_learner): token counts, input-adaptive maps, each
placement with cached generation, detection's per-patch tokens, the video path, LoRA and the
weights door."""

from __future__ import annotations

import pytest
import torch

from mammut.data.tokenizer import CaptionTokenizer
from mammut.model import GenerationConfig, Mammut, PrefixConfig, VisualPrefix, generate, generate_after_prompts
from mammut.model.lora import LoraConfig, add_lora, lora_targets
from mammut.model.token_learner import TokenLearner
from mammut.model.weights import load_mammut_weights
from mammut.task import TaskContext
from mammut.tasks.detection import DetectionTask
from mammut.tasks.detection.task import DetectionInputs

from test_model import BOS, random_tokens, tiny_config

S = 4  # learned tokens
# image 32 px, patch 8: 16 patch tokens and a class token; each placement of the learner.
PLACEMENTS = {
    "vision": dict(fusion_vision_block=0),
    "once": dict(decoder_fusion="once"),
    "iterative": dict(decoder_fusion="iterative"),
    "iterative_some_layers": dict(decoder_fusion="iterative", fusion_layers=[2]),
    "iterative_cross_blocks": dict(decoder_fusion="iterative", decoder_layout="cross_blocks", visual_to_text=True),
    "vision_and_iterative": dict(fusion_vision_block=0, decoder_fusion="iterative"),
}


def fused_model(seed: int = 0, **fusion) -> Mammut:
    torch.manual_seed(seed)
    model = Mammut(tiny_config(fusion_tokens=S, fusion_bottleneck=8, **fusion)).eval()
    with torch.no_grad():  # the text's say starts at zero; make it speak, so that the tests see it
        for learner in model.modules():
            if isinstance(learner, TokenLearner) and learner.condition is not None:
                learner.condition.weight.normal_(std=1.0)
    return model


@pytest.fixture
def g():
    return torch.Generator().manual_seed(1)


def test_token_counts_by_hand(g):
    images = torch.randn(2, 3, 32, 32, generator=g)
    plain = fused_model()
    assert plain.encode_image(images).shape == (2, 1 + 16, 32)  # class token + (32 / 8)^2 patches
    reduced = fused_model(**PLACEMENTS["vision"])
    assert reduced.encode_image(images).shape == (2, 1 + S, 32)
    assert reduced.encode_patches(images).shape == (2, 1 + 16, 32)
    # Before the decoder: the encoder keeps 17 tokens; every cross-attention layer sees S.
    once = fused_model(**PLACEMENTS["once"])
    assert once.encode_image(images).shape == (2, 17, 32)
    contexts = once.decoder.layer_contexts(once.encode_image(images))
    assert [None if c is None else tuple(c.shape) for c in contexts] == [None, (2, S, 32), (2, S, 32)]
    # Iterative: each fusion layer learns S tokens of its own from all 17.
    layer = fused_model(**PLACEMENTS["iterative"]).decoder.layers[1].cross_attention
    tokens = torch.randn(2, 17, 32, generator=g)
    assert layer.learner(tokens, torch.randn(2, 32, generator=g)).shape == (2, S, 32)
    k, v = layer.context_keys_values(tokens, torch.randn(2, 32, generator=g))
    assert k.shape == v.shape == (2, 2, S, 16)  # (B, heads, S, head width)


def test_a_learned_token_is_a_weighted_mean_of_the_inputs_whose_weights_follow_the_input(g):
    torch.manual_seed(0)
    learner = TokenLearner(8, num_tokens=3, bottleneck=6)
    tokens = torch.randn(2, 10, 8, generator=g)
    weights = learner.attention(tokens)
    assert weights.shape == (2, 3, 10)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3))
    torch.testing.assert_close(learner(tokens), weights @ tokens)
    # Input-adaptive: other tokens, other maps (not a fixed pooling).
    other = tokens.clone()
    other[:, :5] = torch.randn(2, 5, 8, generator=g)
    assert (learner.attention(other) - weights).abs().max() > 1e-2


def test_a_conditioned_learner_starts_as_the_plain_one_and_then_follows_the_text(g):
    torch.manual_seed(0)
    learner = TokenLearner(8, num_tokens=3, bottleneck=6, condition_width=5)
    tokens = torch.randn(2, 10, 8, generator=g)
    first, second = torch.randn(2, 5, generator=g), torch.randn(2, 5, generator=g)
    torch.testing.assert_close(learner.attention(tokens, first), learner.attention(tokens, second))
    torch.nn.init.normal_(learner.condition.weight)
    assert (learner.attention(tokens, first) - learner.attention(tokens, second)).abs().max() > 1e-2
    with pytest.raises(ValueError, match="condition"):
        learner(tokens)


def test_the_contrastive_pass_and_the_image_embedding_never_see_the_text(g):
    model = fused_model(**PLACEMENTS["vision_and_iterative"])
    images, tokens = torch.randn(2, 3, 32, 32, generator=g), random_tokens(2, 8, g)
    other = random_tokens(2, 8, g)
    out, out_other = model(images, tokens), model(images, other)
    torch.testing.assert_close(out.image_embedding, out_other.image_embedding)
    # The caption's first position reads the same prompt (bos) and the same image: the same logits.
    torch.testing.assert_close(out.caption_logits[:, 0], out_other.caption_logits[:, 0])


def test_iterative_fusion_reads_the_prompt_and_not_the_tokens_after_it(g):
    model = fused_model(**PLACEMENTS["iterative"])
    visual = model.encode_image(torch.randn(2, 3, 32, 32, generator=g))
    tokens = random_tokens(2, 8, g)
    prompt = torch.tensor([4, 4])
    logits = model.caption_logits(tokens, visual, prompt_lengths=prompt)
    after = tokens.clone()
    after[:, 6] = (after[:, 6] + 1) % model.config.vocab_size  # a token after the prompt
    torch.testing.assert_close(model.caption_logits(after, visual, prompt_lengths=prompt)[:, :6], logits[:, :6])
    within = tokens.clone()
    within[:, 2] = (within[:, 2] + 1) % model.config.vocab_size  # a prompt token changes the visual tokens too
    assert not torch.allclose(model.caption_logits(within, visual, prompt_lengths=prompt)[:, :2], logits[:, :2])
    # The prompt's length is the condition's: reading more of the text gives other visual tokens.
    assert not torch.allclose(model.caption_logits(tokens, visual, prompt_lengths=prompt + 2)[:, :2], logits[:, :2])


@pytest.mark.parametrize("placement", sorted(PLACEMENTS))
def test_cached_decoding_gives_the_logits_of_the_whole_pass(placement, g):
    model = fused_model(**PLACEMENTS[placement])
    images = torch.randn(2, 3, 32, 32, generator=g)
    visual, layer_tokens = model.encode_image_with_layers(images, [-1])
    torch.manual_seed(3)
    prefix = VisualPrefix(PrefixConfig(2, [-1]), model.config.vision_width, model.config.text_width)(layer_tokens)
    tokens = random_tokens(2, 9, g)
    for extra in (None, prefix):
        whole = model.caption_logits(tokens, visual, extra, prompt_lengths=torch.tensor([3, 3]))
        state = model.decoder.start_decoding(visual, 9, extra)
        steps = [model.decoder.decode_step(tokens[:, :3], state)]  # the prompt at once, then one at a time
        steps += [model.decoder.decode_step(tokens[:, i:i + 1], state) for i in range(3, 9)]
        torch.testing.assert_close(torch.cat(steps, dim=1), whole, atol=1e-5, rtol=1e-4)


# Two placements that cover every mechanism (a learner in the ViT, one before the decoder, one per
# layer on the text) run in the quick suite; the others with the slow tests.
QUICK = ("once", "vision_and_iterative")


@pytest.mark.parametrize("placement", [name if name in QUICK else pytest.param(name, marks=pytest.mark.slow)
                                       for name in sorted(PLACEMENTS)])
def test_cached_generation_equals_uncached_with_every_placement(placement, g):
    model = fused_model(**PLACEMENTS[placement])
    visual = model.encode_image(torch.randn(2, 3, 32, 32, generator=g))
    prompts, lengths = random_tokens(2, 5, g), torch.tensor([2, 4])  # questions of different lengths, as in VQA
    for beams in (1, 3):
        cached, uncached = (GenerationConfig(max_new_tokens=5, num_beams=beams, use_cache=use_cache)
                            for use_cache in (True, False))
        assert torch.equal(generate(model, visual, config=cached), generate(model, visual, config=uncached))
        assert torch.equal(generate_after_prompts(model, visual, prompts, lengths, cached),
                           generate_after_prompts(model, visual, prompts, lengths, uncached))


def test_detection_heads_see_every_patch_whatever_the_fusion(g):
    tokenizer = CaptionTokenizer.train(["a circle", "a square", "a red circle", "a blue square"] * 4, vocab_size=300)
    names = ["circle", "square"]
    for fusion in ({}, PLACEMENTS["vision"], PLACEMENTS["vision_and_iterative"]):
        model = fused_model(**fusion, vocab_size=tokenizer.vocab_size)
        task = DetectionTask()
        task.build(model.config)
        task.connect(TaskContext(model.config, GenerationConfig(), DetectionInputs((3, 32, 32)), tokenizer))
        images = torch.randn(2, 3, 32, 32, generator=g)
        detections = task.detect(model, images, names)
        assert detections.boxes.shape[:2] == (2, 16) and detections.logits.shape == (2, 16, 2)
        # Each patch's prediction is its own: changing one patch's pixels moves its box most.
        changed = images.clone()
        changed[:, :, :8, :8] += 3.0
        moved = (task.detect(model, changed, names).boxes - detections.boxes).abs().sum(-1)  # (B, 16)
        assert moved.argmax(dim=1).tolist() == [0, 0]


def test_video_tube_tokens_are_reduced_the_same_way(g):
    tubes = [{"kernel": [1, 8, 8], "stride": [4, 8, 8]}, {"kernel": [2, 16, 16], "stride": [2, 16, 16]}]
    video = dict(video_frames=4, tube_shapes=tubes, vision_width=36)  # 3D sin-cos positions need a width of 6k
    plain = fused_model(**video)
    reduced = fused_model(**video, **PLACEMENTS["vision"])
    clips = torch.randn(2, 3, 4, 32, 32, generator=g)
    # 1 frame x 16 patches + 2 x 2 x 2 wide tubes = 24 tube tokens and the class token.
    assert plain.encode_image(clips).shape == (2, 25, 36)
    assert reduced.encode_image(clips).shape == (2, 1 + S, 36)
    visual = reduced.encode_image(clips)
    assert torch.equal(generate(reduced, visual, config=GenerationConfig(max_new_tokens=6)),
                       generate(reduced, visual, config=GenerationConfig(max_new_tokens=6, use_cache=False)))


def test_lora_targets_the_learners_and_training_starts_from_the_same_model(g):
    model = fused_model(**PLACEMENTS["vision_and_iterative"])
    assert set(lora_targets(model, ["vision.token_learner.*"])) == {"vision.token_learner.maps.fc1",
                                                                    "vision.token_learner.maps.fc2"}
    images, tokens = torch.randn(2, 3, 32, 32, generator=g), random_tokens(2, 8, g)
    before = model(images, tokens).caption_logits
    names = add_lora(model, LoraConfig(rank=2, targets=["vision.token_learner.*", "decoder.layers.*.cross_attention.*"]))
    assert "decoder.layers.1.cross_attention.learner.maps.fc1" in names
    torch.testing.assert_close(model(images, tokens).caption_logits, before)


def test_blocks_for_sharding_are_the_same_and_the_learners_sit_in_them_or_the_root():
    plain, fused = fused_model(), fused_model(**PLACEMENTS["vision_and_iterative"])
    assert len(fused.transformer_blocks()) == len(plain.transformer_blocks())
    in_blocks = {id(p) for block in fused.transformer_blocks() for p in block.parameters()}
    learners = [m for m in fused.modules() if isinstance(m, TokenLearner)]
    # The decoder's own learners are inside their layer's unit; the ViT's is the root's (a small MLP).
    assert [all(id(p) in in_blocks for p in m.parameters()) for m in learners].count(True) == 2
    assert not any(id(p) in in_blocks for p in fused.vision.token_learner.parameters())
    assert {"encode_patches", "caption_hidden", "chunked_caption_loss"} <= set(fused.fsdp_entry_points)


def test_a_checkpoint_without_the_learner_loads_and_reports_it_as_initialised(tmp_path, g):
    plain = fused_model(seed=5)
    torch.save(plain.state_dict(), tmp_path / "plain.pt")
    fused = fused_model(seed=6, **PLACEMENTS["vision_and_iterative"])
    learner_names = {name for name, _ in fused.named_parameters() if "learner" in name}
    own_start = {name: p.detach().clone() for name, p in fused.named_parameters() if name in learner_names}
    report = load_mammut_weights(fused, tmp_path / "plain.pt")
    assert learner_names <= set(report.unfilled)
    assert set(report.unfilled) == learner_names and not report.skipped
    for name, p in fused.named_parameters():
        expected = own_start[name] if name in learner_names else plain.state_dict()[name]
        assert torch.equal(p.detach(), expected), name
    # The loaded model sees its encoder's patches as the checkpoint's model did.
    images = torch.randn(2, 3, 32, 32, generator=g)
    torch.testing.assert_close(fused.encode_patches(images), plain.encode_image(images))


def test_settings_that_make_no_sense_are_refused():
    with pytest.raises(ValueError, match="decoder_fusion"):
        tiny_config(decoder_fusion="twice")
    with pytest.raises(ValueError, match="fusion_vision_block"):
        tiny_config(fusion_vision_block=2)  # the ViT has blocks 0 and 1
    with pytest.raises(ValueError, match="fusion_layers"):
        tiny_config(decoder_fusion="iterative", fusion_layers=[0])  # layer 0 does not cross-attend
    with pytest.raises(ValueError, match="fusion_layers"):
        tiny_config(decoder_fusion="once", fusion_layers=[1])
