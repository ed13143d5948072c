"""VQAv2-style questions about a scene, with ten noisy human-like answers each.

Five question types: colour, shape, count, existence and relation. A question is
only asked when its answer is unambiguous (the object it refers to is the only
one matching the description). The ten answers are mostly the canonical answer,
some surface variants that VQA accuracy's normalisation maps back to it ("two",
"a circle", "Red."), and the occasional wrong answer, as in real annotations.
"""

import random
from dataclasses import dataclass
from itertools import product

from .captions import RELATION_WORDS, with_article
from .scene import RELATIONS, Scene, SceneObject, relation
from .world import COLOURS, SHAPES, plural

QUESTION_TYPES = ("colour", "shape", "count", "existence", "relation")
ANSWER_TYPES = {"colour": "other", "shape": "other", "count": "number", "existence": "yes/no", "relation": "other"}

ANSWERS_PER_QUESTION = 10
VARIANT_PROBABILITY = 0.2
WRONG_PROBABILITY = 0.07

NUMBER_WORDS = ("zero", "one", "two", "three")


@dataclass(frozen=True)
class Question:
    question: str
    question_type: str
    answer: str

    @property
    def answer_type(self) -> str:
        return ANSWER_TYPES[self.question_type]


def _references(obj: SceneObject, scene: Scene, using: tuple[str, ...]) -> list[dict[str, str]]:
    """Attribute subsets drawn from `using` that pick out `obj` alone in the scene."""
    others = [o for o in scene.objects if o is not obj]
    found = []
    for mask in product((False, True), repeat=len(using)):
        names = [name for name, keep in zip(using, mask) if keep]
        if not names:
            continue
        values = [getattr(obj, name) for name in names]
        if not any([getattr(o, name) for name in names] == values for o in others):
            found.append(dict(zip(names, values)))
    return found


def _phrase(attributes: dict[str, str], noun: str = "object") -> str:
    """Noun phrase such as "large red star", or "red object" when the shape is not named."""
    words = [attributes[name] for name in ("size", "colour") if name in attributes]
    return " ".join(words + [attributes.get("shape", noun)])


def _colour_question(scene: Scene, rng: random.Random) -> Question | None:
    options = [(o, ref) for o in scene.objects for ref in _references(o, scene, ("size", "shape")) if "shape" in ref]
    if not options:
        return None
    obj, ref = rng.choice(options)
    template = rng.choice(("what color is the {}?", "what is the color of the {}?", "which color is the {}?"))
    return Question(template.format(_phrase(ref)), "colour", obj.colour)


def _shape_question(scene: Scene, rng: random.Random) -> Question | None:
    options = [(o, ref) for o in scene.objects for ref in _references(o, scene, ("size", "colour")) if "colour" in ref]
    if not options:
        return None
    obj, ref = rng.choice(options)
    noun = rng.choice(("object", "thing"))
    template = rng.choice(("what shape is the {}?", "what is the shape of the {}?"))
    return Question(template.format(_phrase(ref, noun)), "shape", obj.shape)


def _count_question(scene: Scene, rng: random.Random) -> Question:
    objects = scene.objects
    kind = rng.choice(("all", "colour", "shape"))
    if kind == "colour":
        # Mostly colours that are there, so the answer is not nearly always zero.
        colour = rng.choice(objects).colour if rng.random() < 0.7 else rng.choice(list(COLOURS))
        text = f"how many {colour} shapes are there?"
        count = sum(o.colour == colour for o in objects)
    elif kind == "shape":
        shape = rng.choice(objects).shape if rng.random() < 0.7 else rng.choice(SHAPES)
        text = f"how many {plural(shape)} are there?"
        count = sum(o.shape == shape for o in objects)
    else:
        text = rng.choice(
            ("how many shapes are there?", "how many objects are there?", "how many shapes are in the picture?")
        )
        count = len(objects)
    return Question(text, "count", str(count))


def _existence_question(scene: Scene, rng: random.Random) -> Question:
    form = rng.choice((("colour", "shape"), ("shape",), ("colour",)))
    present = {tuple(getattr(o, name) for name in form) for o in scene.objects}
    vocabulary = {"colour": list(COLOURS), "shape": list(SHAPES)}
    if rng.random() < 0.5:  # balanced yes/no, so "yes" is no better than chance
        values, answer = rng.choice(sorted(present)), "yes"
    else:
        absent = [v for v in product(*(vocabulary[name] for name in form)) if v not in present]
        values, answer = rng.choice(absent), "no"
    attributes = dict(zip(form, values))
    if form == ("colour",):
        text = rng.choice((f"is there anything {values[0]}?", f"is there a {values[0]} shape?"))
    elif form == ("shape",):
        text = rng.choice((f"is there {with_article(values[0])}?", f"are there any {plural(values[0])}?"))
    else:
        text = f"is there {with_article(_phrase(attributes))}?"
    return Question(text, "existence", answer)


def _relation_question(scene: Scene, rng: random.Random) -> Question | None:
    options = []
    for anchor in scene.objects:
        references = [r for r in _references(anchor, scene, ("size", "colour", "shape")) if "shape" in r]
        for rel in RELATIONS:
            related = [o for o in scene.objects if o is not anchor and relation(o, anchor) == rel]
            if len(related) == 1:
                options.extend((related[0], rel, ref) for ref in references)
    if not options:
        return None
    obj, rel, ref = rng.choice(options)
    head = rng.choice(("what is", "what shape is", "which shape is"))
    text = f"{head} {rng.choice(RELATION_WORDS[rel])} the {_phrase(ref)}?"
    return Question(text, "relation", obj.shape)


def questions_for_scene(scene: Scene, rng: random.Random) -> list[Question]:
    """One question of each type that has an unambiguous answer in this scene."""
    asked = (
        _colour_question(scene, rng),
        _shape_question(scene, rng),
        _count_question(scene, rng),
        _existence_question(scene, rng),
        _relation_question(scene, rng),
    )
    return [q for q in asked if q is not None]


def _variants(question: Question) -> list[str]:
    """Surface forms of the answer that VQA normalisation maps back to it."""
    answer = question.answer
    if question.answer_type == "number":
        word = NUMBER_WORDS[int(answer)]
        return [word, word.capitalize(), answer + "."]
    if question.answer_type == "yes/no":
        return [answer.capitalize(), answer + ".", answer.capitalize() + "!"]
    if question.question_type == "colour":
        return [answer.capitalize(), answer + "."]
    return [with_article(answer), "the " + answer, answer.capitalize(), answer + "."]


def _wrong_answers(question: Question) -> list[str]:
    answer = question.answer
    if question.answer_type == "number":
        return [str(n) for n in (int(answer) - 1, int(answer) + 1) if n >= 0]
    if question.answer_type == "yes/no":
        return ["no" if answer == "yes" else "yes"]
    vocabulary = COLOURS if question.question_type == "colour" else SHAPES
    return [word for word in vocabulary if word != answer]


def noisy_answers(question: Question, rng: random.Random) -> list[dict]:
    """Ten VQAv2 answer records; the canonical answer is always the most frequent string."""
    variants, wrong = _variants(question), _wrong_answers(question)
    while True:
        texts, confidences = [], []
        for _ in range(ANSWERS_PER_QUESTION):
            draw = rng.random()
            if draw < WRONG_PROBABILITY:
                texts.append(rng.choice(wrong))
                confidences.append(rng.choice(("maybe", "no")))
                continue
            if draw < WRONG_PROBABILITY + VARIANT_PROBABILITY:
                texts.append(rng.choice(variants))
            else:
                texts.append(question.answer)
            confidences.append("yes" if rng.random() < 0.9 else "maybe")
        canonical = texts.count(question.answer)
        if all(texts.count(t) < canonical for t in texts if t != question.answer):
            break
    return [
        {"answer": text, "answer_confidence": confidence, "answer_id": k + 1}
        for k, (text, confidence) in enumerate(zip(texts, confidences))
    ]
