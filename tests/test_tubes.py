"""Sparse video tubes: token counts, kernels that start as the image patch embedding, 3D positions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mammut.model.tubes import SparseTubes, TubeShape, inflate_patch_kernel, sincos_3d, temporal_ramp

CUBE = TubeShape((4, 8, 8), (8, 16, 16))
THIN = TubeShape((8, 4, 4), (4, 16, 16), (2, 4, 4))
FRAME = TubeShape((1, 8, 8), (16, 8, 8))


def patch_tokens(patch_embedding: nn.Conv2d):
    """The image path's tokens of frames (B', 3, H, W): what a frame tube is given."""
    return lambda frames: patch_embedding(frames).flatten(2).transpose(1, 2)


def test_token_count_matches_a_hand_count():
    # 16 frames of 64x64. CUBE: t (16-4)//8+1 = 2, y and x (64-8)//16+1 = 4 -> 32.
    # THIN: t (16-2-8)//4+1 = 2, y and x (64-4-4)//16+1 = 4 -> 32. FRAME: 1 x 8 x 8 = 64.
    assert CUBE.grid(16, 64) == (2, 4, 4) and THIN.grid(16, 64) == (2, 4, 4) and FRAME.grid(16, 64) == (1, 8, 8)
    tubes = SparseTubes([CUBE, THIN, FRAME], width=48, frames=16, image_size=64, patch_size=8)
    assert tubes.num_tokens == 128
    assert [tubes.is_frame_tube(shape) for shape in (CUBE, THIN, FRAME)] == [False, False, True]
    assert set(tubes.kernels) == {"0", "1"}  # the frame tube has no kernel of its own
    clips = torch.randn(2, 3, 16, 64, 64)
    assert tubes(clips, patch_tokens(nn.Conv2d(3, 48, 8, 8))).shape == (2, 128, 48)
    with pytest.raises(ValueError, match="frame tube"):
        tubes(clips)
    with pytest.raises(ValueError, match="does not fit"):
        SparseTubes([TubeShape((32, 8, 8), (1, 8, 8))], width=48, frames=16, image_size=64, patch_size=8)


def test_the_frame_tube_is_the_image_path_on_the_frames_it_picks():
    torch.manual_seed(0)
    patch_embedding = nn.Conv2d(3, 48, kernel_size=8, stride=8)
    two_frames = TubeShape((1, 8, 8), (8, 8, 8), (3, 0, 0))  # frames 3 and 11
    tubes = SparseTubes([two_frames], width=48, frames=16, image_size=64, patch_size=8)
    clip = torch.randn(2, 3, 16, 64, 64)
    tokens = tubes(clip, patch_tokens(patch_embedding)) - tubes.position_scale * tubes.position_embedding
    for position, frame in enumerate((3, 11)):
        torch.testing.assert_close(tokens[:, 64 * position:64 * (position + 1)],
                                   patch_tokens(patch_embedding)(clip[:, :, frame]), rtol=1e-5, atol=1e-5)


# CLIP's ViTs (openMaMMUT's too) have a patch embedding without bias.
@pytest.mark.parametrize("bias", [True, False], ids=["with_bias", "bias_free"])
def test_an_inflated_single_frame_kernel_reproduces_the_patch_embedding_on_a_static_clip(bias):
    torch.manual_seed(0)
    patch_embedding = nn.Conv2d(3, 48, kernel_size=8, stride=8, bias=bias)
    sparse_frame = TubeShape((1, 8, 8), (16, 16, 16))  # spatially sparse: a 3D kernel, not the image path
    tubes = SparseTubes([sparse_frame], width=48, frames=16, image_size=64, patch_size=8,
                        patch_embedding=patch_embedding)
    image = torch.randn(2, 3, 64, 64)
    clip = image[:, :, None].expand(-1, -1, 16, -1, -1)
    tokens = tubes(clip) - tubes.position_embedding
    every_other_patch = patch_embedding(image)[:, :, ::2, ::2].flatten(2).transpose(1, 2)
    torch.testing.assert_close(tokens, every_other_patch, rtol=1e-5, atol=1e-5)


def test_inflated_kernels_respond_to_a_static_clip_as_the_resized_2d_kernel_does_to_its_frame():
    torch.manual_seed(1)
    weight = torch.randn(6, 3, 8, 8)
    image = torch.randn(1, 3, 32, 32)
    clip = image[:, :, None].expand(-1, -1, 8, -1, -1)
    for kernel in [(4, 8, 8), (2, 12, 12), (8, 4, 4)]:
        tube = F.conv3d(clip, inflate_patch_kernel(weight, kernel), stride=(4, 4, 4))
        flat = F.conv2d(image, inflate_patch_kernel(weight, (1, *kernel[1:]))[:, :, 0], stride=4)
        for t in range(tube.shape[2]):
            torch.testing.assert_close(tube[:, :, t], flat, rtol=1e-4, atol=1e-4)
    # Resizing keeps each kernel's sum: a flat grey region gives the same response at any size.
    for size in (4, 12, 16):
        torch.testing.assert_close(inflate_patch_kernel(weight, (1, size, size)).sum(dim=(2, 3, 4)),
                                   weight.sum(dim=(2, 3)), rtol=1e-4, atol=1e-4)


def test_position_embeddings_follow_the_tube_centres_in_time_and_space():
    # CUBE's first tube covers frames 0-3 and pixels 0-7: centre (1.5, 3.5, 3.5).
    assert CUBE.centres(16, 64)[0].tolist() == [1.5, 3.5, 3.5]
    assert THIN.centres(16, 64)[0].tolist() == [5.5, 5.5, 5.5]  # frames 2-9, pixels 4-7
    embedding = sincos_3d(torch.tensor([[1.5, 3.5, 3.5], [1.5, 3.5, 3.5], [9.5, 3.5, 3.5], [1.5, 3.5, 19.5]]), 48)
    assert torch.equal(embedding[0], embedding[1])
    # Moving in time changes only the time third of the embedding; moving in x only the x third.
    assert not torch.equal(embedding[0, :16], embedding[2, :16]) and torch.equal(embedding[0, 16:], embedding[2, 16:])
    assert torch.equal(embedding[0, :32], embedding[3, :32]) and not torch.equal(embedding[0, 32:], embedding[3, 32:])
    tubes = SparseTubes([CUBE, FRAME], width=48, frames=16, image_size=64, patch_size=8)
    assert not tubes.position_embedding.requires_grad and "position_embedding" not in tubes.state_dict()
    assert tubes.position_scale.requires_grad  # its gain is learned


def test_the_temporal_ramp_turns_a_change_into_its_difference():
    for frames in (2, 5, 16):
        ramp = temporal_ramp(frames)
        assert abs(ramp.sum()) < 1e-6 and torch.allclose(ramp[ramp > 0].sum(), torch.tensor(1.0))
        assert torch.all(ramp[1:] > ramp[:-1])  # rising: later frames weigh more
    before, after = torch.randn(3), torch.randn(3)
    clip = torch.stack([before] * 8 + [after] * 8)  # (16, 3): A for 8 frames, then B
    torch.testing.assert_close(temporal_ramp(16) @ clip, after - before)


@pytest.mark.parametrize("from_patch_embedding", [True, False], ids=["linear_patch", "random"])
def test_a_motion_tube_is_silent_on_a_static_clip_and_flips_sign_when_time_runs_backwards(from_patch_embedding):
    torch.manual_seed(4)
    patch_embedding = nn.Conv2d(3, 48, kernel_size=8, stride=8) if from_patch_embedding else None
    motion = TubeShape((16, 8, 8), (16, 12, 12), (0, 4, 4), init="motion")
    tubes = SparseTubes([motion], width=48, frames=16, image_size=32, patch_size=8, patch_embedding=patch_embedding)
    conv = tubes.kernels["0"]
    bias = conv.bias[None, None]
    static = torch.randn(2, 3, 32, 32)[:, :, None].expand(-1, -1, 16, -1, -1)
    with torch.no_grad():
        silent = tubes(static) - tubes.position_embedding
        moving = torch.randn(2, 3, 16, 32, 32)
        forward = tubes(moving) - tubes.position_embedding - bias
        backward = tubes(moving.flip(2)) - tubes.position_embedding - bias
    torch.testing.assert_close(silent, bias.expand_as(silent), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(backward, -forward, rtol=1e-4, atol=1e-4)
    assert forward.abs().mean() > 0.1  # and it does respond to change


def test_a_motion_tube_from_a_patch_embedding_embeds_the_late_frame_minus_the_early_one():
    """A clip that cuts from image A to image B half-way: the token is W·(B - A) + bias, where W is
    the image model's patch kernel."""
    torch.manual_seed(5)
    patch_embedding = nn.Conv2d(3, 48, kernel_size=8, stride=8)
    motion = TubeShape((16, 8, 8), (16, 8, 8), init="motion")
    tubes = SparseTubes([motion], width=48, frames=16, image_size=32, patch_size=8, patch_embedding=patch_embedding)
    before, after = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)
    clip = torch.cat([before[:, :, None].expand(-1, -1, 8, -1, -1), after[:, :, None].expand(-1, -1, 8, -1, -1)], 2)
    with torch.no_grad():
        tokens = tubes(clip) - tubes.position_embedding
        expected = patch_tokens(patch_embedding)(after) - patch_tokens(patch_embedding)(before) + patch_embedding.bias
    torch.testing.assert_close(tokens, expected, rtol=1e-4, atol=1e-4)


def test_a_dilated_tube_covers_its_spread_window_and_is_centred_on_it():
    # 8 taps every 2nd frame and 16 taps every 2nd pixel: 15 frames by 31 x 31 pixels. In 16 frames of
    # 64 x 64 with stride 16: t (16-15)//16+1 = 1, y and x (64-31)//16+1 = 3 -> 9 tubes, centred on
    # frame 7 and pixels 15, 31 and 47.
    spread = TubeShape((8, 16, 16), (16, 16, 16), dilation=(2, 2, 2))
    assert spread.extent == (15, 31, 31) and spread.grid(16, 64) == (1, 3, 3)
    assert spread.centres(16, 64)[:3].tolist() == [[7.0, 15.0, 15.0], [7.0, 15.0, 31.0], [7.0, 15.0, 47.0]]
    tubes = SparseTubes([spread], width=48, frames=16, image_size=64, patch_size=8)
    assert tubes.kernels["0"].dilation == (2, 2, 2)
    assert tubes(torch.randn(2, 3, 16, 64, 64)).shape == (2, 9, 48)
    with pytest.raises(ValueError, match="dilation"):
        TubeShape((8, 16, 16), (16, 16, 16), dilation=(1, 0, 1))


def moving_square(dx: int, dy: int, frames: int = 16, size: int = 32) -> torch.Tensor:
    """(1, 3, frames, size, size): a white 6-pixel square on black, from (8, 8), moving dx, dy pixels a frame."""
    clip = torch.zeros(1, 3, frames, size, size)
    for t in range(frames):
        x, y = 8 + dx * t, 8 + dy * t
        clip[:, :, t, y:y + 6, x:x + 6] = 1.0
    return clip


def test_a_velocity_tube_token_is_linear_in_the_velocity_and_each_channel_has_its_direction():
    """Channel k weighs a colour mix by a ramp in time and a ramp along θ_k = 2πk / width in space:
    its token is a linear function of how far the square's centre moves, 0 for a static clip,
    and channel 0 (θ = 0) sees only x motion, channel width / 4 (θ = 90°) only y motion."""
    torch.manual_seed(6)
    velocity = TubeShape((16, 32, 32), (16, 32, 32), init="velocity")
    kernel = SparseTubes([velocity], width=48, frames=16, image_size=32, patch_size=8).kernels["0"]
    with torch.no_grad():
        right, down, diagonal = (kernel(moving_square(dx, dy)).flatten() for dx, dy in ((1, 0), (0, 1), (1, 1)))
        left = kernel(moving_square(1, 0).flip(2)).flatten()  # the same path, run backwards
        static = kernel(moving_square(0, 0)).flatten()
    torch.testing.assert_close(static, torch.zeros_like(static), rtol=0, atol=1e-6)
    torch.testing.assert_close(left, -right, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(diagonal, right + down, rtol=1e-4, atol=1e-6)
    assert right.abs().mean() > 1e-3 and down.abs().mean() > 1e-3
    assert down[0].abs() < 1e-6 * right[0].abs().clamp(min=1) and right[0].abs() > 1e-3
    assert right[12].abs() < 1e-6 and down[12].abs() > 1e-3
    # cos θ_k and sin θ_k scale one colour response: right_k · sin θ_k = down_k · cos θ_k.
    angles = torch.arange(48) * (2 * torch.pi / 48)
    torch.testing.assert_close(right * angles.sin(), down * angles.cos(), rtol=1e-3, atol=1e-6)


def test_velocity_tubes_keep_their_start_when_the_image_model_has_a_linear_patch_embedding():
    torch.manual_seed(7)
    velocity = TubeShape((8, 16, 16), (16, 16, 16), dilation=(2, 2, 2), init="velocity")
    tubes = SparseTubes([velocity], width=48, frames=16, image_size=64, patch_size=8)
    before = tubes.kernels["0"].weight.clone()
    tubes.initialise_from(nn.Conv2d(3, 48, 8, 8))
    assert torch.equal(tubes.kernels["0"].weight, before)
    with pytest.raises(ValueError, match="2 frames"):
        TubeShape((1, 16, 16), (16, 16, 16), init="velocity")
