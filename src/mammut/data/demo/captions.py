"""Captions in varied phrasings, and the canonical description of a scene.

The canonical description lists every object's size, colour and shape plus the
relation of every pair, in a fixed order, so two scenes share it exactly when an
ideal reader could not tell their captions apart. Captions are drawn one at a
time; the split builder keeps drawing until it has five it has not used before.
"""

import random
from itertools import combinations

from .scene import Scene, SceneObject, region, relation

SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}

RELATION_WORDS = {
    "left of": ("to the left of", "left of", "on the left of"),
    "right of": ("to the right of", "right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}

# Relation of an object to one already named ("a star with a square to its left").
RELATION_TO_NAMED = {
    "left of": ("to its left", "on its left"),
    "right of": ("to its right", "on its right"),
    "above": ("above it", "over it"),
    "below": ("below it", "under it"),
}

POSITION_WORDS = {
    ("top", "left"): ("in the top left", "in the upper left corner"),
    ("top", "center"): ("at the top", "near the top"),
    ("top", "right"): ("in the top right", "in the upper right corner"),
    ("middle", "left"): ("on the left", "on the left side"),
    ("middle", "center"): ("in the center", "in the middle"),
    ("middle", "right"): ("on the right", "on the right side"),
    ("bottom", "left"): ("in the bottom left", "in the lower left corner"),
    ("bottom", "center"): ("at the bottom", "near the bottom"),
    ("bottom", "right"): ("in the bottom right", "in the lower right corner"),
}

BACKGROUND_WORDS = {"noise": ("noisy", "textured", "mottled"), "gradient": ("gradient", "smooth", "shaded")}

COUNT_WORDS = {2: "two", 3: "three"}

# Train captions sometimes leave out an object's size, as people do. Val and test
# captions always give every attribute, so each one matches exactly one image.
SIZE_MENTION_PROBABILITY = 0.7


def object_description(obj: SceneObject) -> str:
    return " ".join(obj.attributes)


def object_inventory(scene: Scene) -> str:
    """The multiset of objects (size colour shape), ignoring where they are."""
    return "; ".join(sorted(object_description(o) for o in scene.objects))


def canonical_description(scene: Scene) -> str:
    """Objects and pairwise relations in a fixed order; equal for indistinguishable scenes.

    Example: "large red circle; small blue square | small blue square left of large red circle".
    """
    relations = []
    for a, b in combinations(scene.objects, 2):
        rel = relation(a, b)
        if rel == "right of":
            a, b, rel = b, a, "left of"
        elif rel == "below":
            a, b, rel = b, a, "above"
        relations.append(f"{object_description(a)} {rel} {object_description(b)}")
    text = object_inventory(scene)
    return f"{text} | {'; '.join(sorted(relations))}" if relations else text


def with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


class _Phraser:
    """Draws words for one caption; `complete` forces every attribute to be named."""

    def __init__(self, rng: random.Random, complete: bool):
        self.rng = rng
        self.complete = complete

    def bare(self, obj: SceneObject) -> str:
        words = [obj.colour, obj.shape]
        if self.complete or self.rng.random() < SIZE_MENTION_PROBABILITY:
            words.insert(0, self.rng.choice(SIZE_WORDS[obj.size]))
        return " ".join(words)

    def noun(self, obj: SceneObject) -> str:
        return with_article(self.bare(obj))

    def relation(self, a: SceneObject, b: SceneObject) -> str:
        return self.rng.choice(RELATION_WORDS[relation(a, b)])

    def relation_to_named(self, a: SceneObject, named: SceneObject) -> str:
        return self.rng.choice(RELATION_TO_NAMED[relation(a, named)])


def _single(p: _Phraser, scene: Scene) -> str:
    (obj,) = scene.objects
    rng = p.rng
    where = rng.choice(POSITION_WORDS[region(obj, scene.image_size)])
    background = rng.choice(BACKGROUND_WORDS[scene.background])
    templates = (
        lambda: p.noun(obj),
        lambda: f"{p.noun(obj)} {where}",
        lambda: f"there is {p.noun(obj)} {where}",
        lambda: f"a picture of {p.noun(obj)}",
        lambda: f"an image of {p.noun(obj)} {where}",
        lambda: f"{p.noun(obj)} on a {background} background",
        lambda: f"a single {p.bare(obj)}",
        lambda: f"one {p.bare(obj)} {where}",
    )
    return rng.choice(templates)()


def _pair(p: _Phraser, scene: Scene) -> str:
    a, b = p.rng.sample(scene.objects, 2)
    count = p.rng.choice(("two shapes", "two objects"))
    templates = (
        lambda: f"{p.noun(a)} {p.relation(a, b)} {p.noun(b)}",
        lambda: f"there is {p.noun(a)} {p.relation(a, b)} {p.noun(b)}",
        lambda: f"{p.noun(a)} is {p.relation(a, b)} {p.noun(b)}",
        lambda: f"{p.noun(a)} with {p.noun(b)} {p.relation_to_named(b, a)}",
        lambda: f"{p.noun(a)} and {p.noun(b)}",
        lambda: f"{count}: {p.noun(a)} and {p.noun(b)}",
    )
    return p.rng.choice(templates)()


def _triple(p: _Phraser, scene: Scene) -> str:
    a, b, c = p.rng.sample(scene.objects, 3)
    count = p.rng.choice(("three shapes", "three objects"))
    templates = (
        lambda: f"{p.noun(a)}, {p.noun(b)} and {p.noun(c)}",
        lambda: f"{count}: {p.noun(a)}, {p.noun(b)} and {p.noun(c)}",
        lambda: f"{p.noun(b)} with {p.noun(a)} {p.relation_to_named(a, b)} and "
        f"{p.noun(c)} {p.relation_to_named(c, b)}",
        lambda: f"{p.noun(a)} {p.relation(a, b)} {p.noun(b)}, and {p.noun(c)}",
    )
    return p.rng.choice(templates)()


def draw_caption(scene: Scene, rng: random.Random, complete: bool) -> str:
    """One caption for `scene` in a randomly chosen phrasing; always true of the scene."""
    by_count = {1: _single, 2: _pair, 3: _triple}
    return by_count[len(scene.objects)](_Phraser(rng, complete), scene)
