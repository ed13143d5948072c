"""Demo video clips: one or two objects that each do one thing over 16 frames.

An object moves (left, right, up or down), turns another colour, grows or shrinks. Captions
("a red circle moves to the left") and questions ("which way does the red circle move?" ->
"left") are about what happens, so no single frame answers them: a frame shows where an object
is, not where it goes; what colour it is, not what colour it turns; how big it is, not whether
it grows.

Frames are drawn by the image renderer from one seed per clip, so the background and each
object's colour jitter stay the same from frame to frame and only the event changes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from .render import render
from .scene import Scene, SceneObject
from .split import split_rng
from .world import BACKGROUND_KINDS, BORDER_FRACTION, COLOURS, EXTENT_FRACTION, SHAPES

FRAMES = 16
CLIP_FPS = 8
EVENTS = ("move", "turn", "grow", "shrink")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
TRAVEL_FRACTION = 0.3  # how far a moving object goes, as a fraction of the frame side
TWO_OBJECTS_PROBABILITY = 0.5

MOVE_WORDS = {"left": ("moves to the left", "moves left", "slides to the left"),
              "right": ("moves to the right", "moves right", "slides to the right"),
              "up": ("moves up", "moves upwards", "rises"),
              "down": ("moves down", "moves downwards", "sinks")}
GROW_WORDS = ("grows", "gets bigger", "grows larger")
SHRINK_WORDS = ("shrinks", "gets smaller", "shrinks in size")


@dataclass(frozen=True)
class Action:
    """What one object does: where and how it starts, and the event."""

    shape: str
    colour: str
    size: str  # at the first frame
    cx: float  # centre at the first frame
    cy: float
    event: str
    direction: str = ""  # move
    travel: float = 0.0  # move: distance in pixels
    new_colour: str = ""  # turn
    change_frame: int = 0  # turn: the first frame in the new colour
    extents: tuple[float, float] = (0.0, 0.0)  # extent at the first and at the last frame

    def at(self, frame: int) -> SceneObject:
        t = frame / (FRAMES - 1)
        dx, dy = DIRECTIONS.get(self.direction, (0, 0))
        extent = self.extents[0] + t * (self.extents[1] - self.extents[0])
        colour = self.new_colour if self.event == "turn" and frame >= self.change_frame else self.colour
        return SceneObject(self.shape, colour, self.size, self.cx + dx * self.travel * t,
                           self.cy + dy * self.travel * t, extent)


@dataclass(frozen=True)
class Clip:
    actions: tuple[Action, ...]
    background: str
    image_size: int

    def scene(self, frame: int) -> Scene:
        return Scene(tuple(action.at(frame) for action in self.actions), self.background, self.image_size)


def render_clip(clip: Clip, entropy: tuple[int, ...]) -> np.ndarray:
    """(FRAMES, H, W, 3) uint8: every frame drawn from the same seed, so only the event changes."""
    return np.stack([np.asarray(render(clip.scene(frame), np.random.default_rng(entropy)))
                     for frame in range(FRAMES)])


# ------------------------------------------------------------------ sampling
def _sample_action(rng: random.Random, shape: str, area: tuple[float, float, float, float], image_size: int,
                   directions: tuple[str, ...]) -> Action:
    """An action whose object stays inside ``area`` (x0, y0, x1, y1) at every frame."""
    event = rng.choice(EVENTS)
    colour = rng.choice(list(COLOURS))
    small, large = (rng.uniform(*EXTENT_FRACTION[size]) * image_size for size in ("small", "large"))
    size = {"grow": "small", "shrink": "large"}.get(event, rng.choice(("small", "large")))
    extents = {"grow": (small, large), "shrink": (large, small)}.get(event, (small, small) if size == "small"
                                                                     else (large, large))
    half = max(extents) / 2
    x0, y0, x1, y1 = area[0] + half, area[1] + half, area[2] - half, area[3] - half
    if event == "move":
        direction = rng.choice(directions)
        dx, dy = DIRECTIONS[direction]
        travel = TRAVEL_FRACTION * image_size
        # The start leaves room for the whole path.
        cx = rng.uniform(x0 + max(0, -dx) * travel, x1 - max(0, dx) * travel)
        cy = rng.uniform(y0 + max(0, -dy) * travel, y1 - max(0, dy) * travel)
        return Action(shape, colour, size, cx, cy, event, direction=direction, travel=travel, extents=extents)
    cx, cy = rng.uniform(x0, x1), rng.uniform(y0, y1)
    if event == "turn":
        new_colour = rng.choice([c for c in COLOURS if c != colour])
        return Action(shape, colour, size, cx, cy, event, new_colour=new_colour,
                      change_frame=rng.randint(FRAMES // 4, 3 * FRAMES // 4), extents=extents)
    return Action(shape, colour, size, cx, cy, event, extents=extents)


def sample_clip(rng: random.Random, image_size: int) -> Clip:
    """One object anywhere, or two of different shapes in the two halves of the frame, each
    moving (if it moves) along its half's long side, so that they never meet."""
    border = BORDER_FRACTION * image_size
    whole = (border, border, image_size - border, image_size - border)
    if rng.random() >= TWO_OBJECTS_PROBABILITY:
        action = _sample_action(rng, rng.choice(SHAPES), whole, image_size, tuple(DIRECTIONS))
        return Clip((action,), rng.choice(BACKGROUND_KINDS), image_size)
    middle = image_size / 2
    if rng.random() < 0.5:  # left and right halves, vertical moves
        areas = [(border, border, middle, image_size - border), (middle, border, image_size - border,
                                                                  image_size - border)]
        directions = ("up", "down")
    else:  # top and bottom halves, horizontal moves
        areas = [(border, border, image_size - border, middle), (border, middle, image_size - border,
                                                                  image_size - border)]
        directions = ("left", "right")
    shapes = rng.sample(SHAPES, 2)
    actions = tuple(_sample_action(rng, shape, area, image_size, directions) for shape, area in zip(shapes, areas))
    return Clip(actions, rng.choice(BACKGROUND_KINDS), image_size)


# ------------------------------------------------------------------ text
def _name(action: Action) -> str:
    """How a question names the object: by its colour too, unless the colour changes."""
    return action.shape if action.event == "turn" else f"{action.colour} {action.shape}"


def describe(action: Action, rng: random.Random) -> str:
    if action.event == "move":
        return f"{action.colour} {action.shape} {rng.choice(MOVE_WORDS[action.direction])}"
    if action.event == "turn":
        return rng.choice((f"{action.colour} {action.shape} turns {action.new_colour}",
                           f"{action.shape} turns from {action.colour} to {action.new_colour}",
                           f"{action.colour} {action.shape} changes color to {action.new_colour}"))
    words = GROW_WORDS if action.event == "grow" else SHRINK_WORDS
    return f"{action.colour} {action.shape} {rng.choice(words)}"


def _with_article(phrase: str) -> str:
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


def draw_caption(clip: Clip, rng: random.Random) -> str:
    parts = [_with_article(describe(action, rng)) for action in clip.actions]
    return rng.choice((" and ", " while ")).join(parts)


def questions(clip: Clip) -> list[tuple[str, str, str]]:
    """(question, answer, question type) about each object's event."""
    asked = []
    for action in clip.actions:
        name = _name(action)
        if action.event == "move":
            asked.append((f"which way does the {name} move?", action.direction, "direction"))
        elif action.event == "turn":
            asked.append((f"what color does the {name} turn?", action.new_colour, "colour change"))
        else:
            asked.append((f"does the {name} grow or shrink?", action.event, "size change"))
    return asked


# ------------------------------------------------------------------ splits and files
CAPTIONS_PER_CLIP = 3
CAPTION_DRAWS = 30
SPLIT_NUMBER_OFFSET = {"train": 0, "val": 1_000_000, "test": 2_000_000}  # as image ids: disjoint across splits
MSRVTT_SPLIT_NAMES = {"train": "train", "val": "validate", "test": "test"}  # MSR-VTT calls val "validate"


@dataclass(frozen=True)
class ClipRecord:
    number: int  # MSR-VTT's numeric id; the file is video{number}.mp4
    index: int  # position within the split; seeds the clip's appearance
    clip: Clip
    captions: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"video{self.number}"


def build_clip_split(split: str, size: int, seed: int, image_size: int) -> list[ClipRecord]:
    """``size`` clips for ``split`` with their captions, deterministically for ``seed``."""
    rng = split_rng(seed, split, "clips")
    records = []
    for index in range(size):
        clip = sample_clip(rng, image_size)
        captions: list[str] = []
        for _ in range(CAPTION_DRAWS):
            caption = draw_caption(clip, rng)
            if caption not in captions:
                captions.append(caption)
            if len(captions) == CAPTIONS_PER_CLIP:
                break
        records.append(ClipRecord(SPLIT_NUMBER_OFFSET[split] + index, index, clip, tuple(captions)))
    return records


def msrvtt_document(records: list[ClipRecord], split: str, info: dict) -> dict:
    """The split's clips and captions in MSR-VTT's ``videodatainfo`` schema."""
    videos = [{"category": 0, "url": "", "video_id": r.name, "start time": 0.0, "end time": FRAMES / CLIP_FPS,
               "split": MSRVTT_SPLIT_NAMES[split], "id": r.number} for r in records]
    sentences = [{"caption": caption, "video_id": r.name} for r in records for caption in r.captions]
    for sen_id, sentence in enumerate(sentences):
        sentence["sen_id"] = sen_id
    return {"info": info, "videos": videos, "sentences": sentences}


def video_qa_document(records: list[ClipRecord], split: str) -> list[dict]:
    """The split's questions in MSRVTT-QA's schema (``video_id`` 7 is ``video7``)."""
    entries = [(question, answer, r.number) for r in records for question, answer, _ in questions(r.clip)]
    return [{"answer": answer, "id": SPLIT_NUMBER_OFFSET[split] + position, "question": question, "video_id": number}
            for position, (question, answer, number) in enumerate(entries)]

