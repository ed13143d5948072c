"""The encoder's video path: clips through sparse tubes and the same ViT blocks, once."""

from __future__ import annotations

import pytest
import torch
import yaml

from mammut.model import Mammut, MammutConfig
from mammut.model.tubes import inflate_patch_kernel
from mammut.tasks.pretrain import PretrainModule

from conftest import REPO

SMALL = dict(image_size=32, patch_size=8, vision_width=48, vision_depth=2, vision_heads=2, text_width=32,
             text_depth=2, text_heads=2, cross_attention_layers=[1], embed_dim=16, context_length=12, vocab_size=50)
TUBES = [
    {"kernel": [1, 8, 8], "stride": [8, 8, 8], "offset": [3, 0, 0]},   # the image path on frames 3 and 11
    {"kernel": [4, 16, 16], "stride": [8, 16, 16], "offset": [2, 0, 0]},
    {"kernel": [16, 4, 4], "stride": [16, 16, 16], "offset": [0, 6, 6]},
]


def small_config(**overrides) -> MammutConfig:
    return MammutConfig(**{**SMALL, "video_frames": 16, "tube_shapes": TUBES, **overrides})


def test_the_demo_video_model_turns_a_clip_into_a_hand_counted_number_of_tokens():
    architecture = yaml.safe_load((REPO / "configs/model/demo_video.yaml").read_text())
    model = Mammut(MammutConfig(**architecture, vocab_size=50)).eval()
    # Frame tube: 1 frame x 8 x 8 = 64. Wide: t (16-2-4)//8+1 = 2, y and x (64-16)//16+1 = 4 -> 32.
    # Velocity: 8 taps every 2nd frame, 16 every 2nd pixel, 31 pixels: t 1, y and x (64-31)//16+1 = 3 -> 9;
    # the same every 4th pixel, 61 pixels: 1. With the class token: 107.
    with torch.no_grad():
        tokens = model.encode_image(torch.randn(2, 3, 16, 64, 64))
    assert model.vision.tubes.num_tokens == 106 and tokens.shape == (2, 107, 192)


@pytest.mark.parametrize("patch_embedding", ["linear", "conv_stem"])
def test_on_a_static_clip_the_frame_tube_gives_the_image_paths_tokens(patch_embedding):
    torch.manual_seed(0)
    model = Mammut(small_config(patch_embedding=patch_embedding)).eval()
    image = torch.randn(2, 3, 32, 32)
    clip = image[:, :, None].expand(-1, -1, 16, -1, -1)
    with torch.no_grad():
        image_tokens = model.vision.embed(image)
        clip_tokens = model.vision.embed(clip)
        tubes = model.vision.tubes
        positions = tubes.position_scale * tubes.position_embedding
    assert torch.equal(clip_tokens[:, :1], image_tokens[:, :1])  # the same class token
    for frame in range(2):  # frames 3 and 11: 16 patch tokens each, the image path's plus their 3D position
        picked = slice(1 + 16 * frame, 1 + 16 * (frame + 1))
        torch.testing.assert_close(clip_tokens[:, picked] - positions[16 * frame:16 * (frame + 1)],
                                   image_tokens[:, 1:], rtol=1e-5, atol=1e-5)


def test_clips_and_images_run_the_same_blocks_once():
    model = Mammut(small_config()).eval()
    calls = []
    for block in model.vision.vit.blocks:
        block.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[1]))
    with torch.no_grad():
        model.encode_image(torch.randn(2, 3, 16, 32, 32))
        model.encode_image(torch.randn(2, 3, 32, 32))
    clip_tokens = 1 + model.vision.tubes.num_tokens
    assert calls == [clip_tokens, clip_tokens, 17, 17]  # two blocks per input, each run once
    # A rank whose clips were all bad runs the same path on zero of them.
    with torch.no_grad():
        assert model.encode_image(torch.zeros(0, 3, 16, 32, 32)).shape == (0, clip_tokens, 48)


def test_the_3d_tubes_start_from_the_image_weights_an_image_checkpoint_brings(tmp_path):
    torch.manual_seed(1)
    image_only = PretrainModule(architecture=MammutConfig(**SMALL))
    path = tmp_path / "image.ckpt"
    torch.save({"state_dict": image_only.state_dict()}, path)
    torch.manual_seed(2)
    video = PretrainModule(architecture=small_config(), init_from=str(path))
    patch = image_only.model.vision.vit.patch_embed.proj.weight
    tubes = video.model.vision.tubes
    torch.testing.assert_close(tubes.kernels["1"].weight, inflate_patch_kernel(patch, (4, 16, 16)))
    torch.testing.assert_close(tubes.kernels["2"].weight, inflate_patch_kernel(patch, (16, 4, 4)))


def test_the_prefix_reads_clip_layers_as_it_reads_image_layers():
    model = Mammut(small_config()).eval()
    with torch.no_grad():
        tokens, layers = model.encode_image_with_layers(torch.randn(3, 3, 16, 32, 32), [0, -1])
        last = model.vision.pool(model.encode_image(torch.randn(3, 3, 16, 32, 32)))
    assert tokens.shape == (3, 1 + model.vision.tubes.num_tokens, 48) and layers.shape == (3, 2, 48)
    assert last.shape == (3, 48)


def test_bad_tube_settings_and_inputs_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="does not fit"):
        small_config(tube_shapes=[{"kernel": [32, 8, 8], "stride": [1, 8, 8]}])
    with pytest.raises(ValueError, match=r"tube_shapes\[0\]"):
        small_config(tube_shapes=[{"kernel": [4, 8], "stride": [1, 8, 8]}])
    with pytest.raises(ValueError, match=r"tube_shapes\[0\]"):
        small_config(tube_shapes=[{"kernel": [4, 8, 8], "stride": [1, 8, 8], "init": "sideways"}])
    with pytest.raises(ValueError, match="at least 2 frames"):
        small_config(tube_shapes=[{"kernel": [1, 8, 8], "stride": [1, 16, 16], "init": "motion"}])
    with pytest.raises(ValueError, match=r"tube_shapes\[0\].*positive kernel, stride and dilation"):
        small_config(tube_shapes=[{"kernel": [4, 8, 8], "stride": [1, 8, 8], "dilation": [1, 0, 1]}])
    with pytest.raises(ValueError, match="does not fit"):  # 8 taps 5 pixels apart span 36 pixels
        small_config(tube_shapes=[{"kernel": [4, 8, 8], "stride": [1, 8, 8], "dilation": [1, 5, 5]}])  # of a 32-pixel clip
    with pytest.raises(ValueError, match="no video path"):
        Mammut(MammutConfig(**SMALL)).encode_image(torch.randn(1, 3, 16, 32, 32))
    with pytest.raises(ValueError, match="clips must be"):
        Mammut(small_config()).encode_image(torch.randn(1, 3, 8, 32, 32))  # 8 frames, not 16


def test_video_only_blocks_see_clips_never_images_and_start_near_the_identity():
    torch.manual_seed(3)
    shared = Mammut(small_config()).eval()
    with_video_blocks = Mammut(small_config(video_layers=[1])).eval()
    missing, unexpected = with_video_blocks.load_state_dict(shared.state_dict(), strict=False)
    assert not unexpected and all(name.startswith("vision.video_blocks.1.") for name in missing)
    images, clips = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 16, 32, 32)
    with torch.no_grad():
        assert torch.equal(with_video_blocks.encode_image(images), shared.encode_image(images))
        torch.testing.assert_close(with_video_blocks.encode_image(clips), shared.encode_image(clips),
                                   rtol=0, atol=1e-2)
    video_block = with_video_blocks.vision.video_blocks["1"]
    with_video_blocks.train()
    with_video_blocks.encode_image(images).sum().backward()
    assert all(p.grad is None for p in video_block.parameters())  # images never reach it
    with_video_blocks.encode_image(clips).sum().backward()
    assert all(p.grad is not None for p in video_block.parameters())
    with pytest.raises(ValueError, match="video_layers"):
        MammutConfig(**SMALL, video_layers=[0])  # no tubes, no video path
