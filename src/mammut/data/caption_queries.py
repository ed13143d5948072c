"""Detection queries from captions, for self-training (OWL-ST, Minderer et al. 2023, arXiv 2306.09683, Sec. 3.1).

OWL-ST asks a detector for every word N-gram of an image's caption and keeps the boxes it is sure
of: the caption names what to look for, no fixed class list is needed. Here the N-grams are those
that can name an object: a caption is cut into phrases at words that cannot be part of one
(articles, prepositions, conjunctions, pronouns, numbers, punctuation), and each phrase gives the
spans that end at its last word, where an English noun phrase keeps its noun:

    "a small blue square to the left of a red star"
        -> "small blue square", "blue square", "square", "left", "red star", "star"

so the object word comes with each run of its adjectives ("red hexagon") and alone ("hexagon");
phrases that end in a place ("left") or the picture itself ("image", "background") give nothing.
The word lists are settings: captions of another language or style bring their own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# Words that end a phrase: they never name an object nor describe one.
STOP_WORDS = frozenset("""
a an the this that these those some any each every all both either neither no other another such
of in on at to from by with without into onto over under above below behind beside besides between among
near next across along around through toward towards beneath inside outside upon within against
and or but nor so yet than then as while where when which who whom whose what why how
is are was were be been being am has have had do does did it its it's they them their there here
i you he she we his her our your my me us one two three four five six seven eight nine ten
many few several more most less least very just only also too not
""".split())

# Object words that name no thing in the picture: places in it ("left", "top"), and the picture
# itself, which OWL-ST drops from its queries ("image", "photo", "stock", ...).
NON_OBJECT_WORDS = frozenset("""
left right top bottom middle center centre front back side corner
image images picture pictures photo photos photograph png jpg stock wallpaper background
""".split())

WORD = re.compile(r"[a-z][a-z'-]*")


def caption_phrases(caption: str, stop_words: frozenset[str] = STOP_WORDS) -> list[list[str]]:
    """The caption's runs of words between stop words (and punctuation), lower-cased."""
    phrases, current = [], []
    for token in re.findall(r"[a-z][a-z'-]*|[^\sa-z]", caption.lower()):
        if WORD.fullmatch(token) and token not in stop_words and not token.isdigit():
            current.append(token)
            continue
        if current:
            phrases.append(current)
        current = []
    if current:
        phrases.append(current)
    return phrases


def caption_queries(caption: str, max_words: int = 3, stop_words: frozenset[str] = STOP_WORDS,
                    non_objects: frozenset[str] = NON_OBJECT_WORDS) -> list[str]:
    """The queries a caption gives, longest first within each phrase, each once.

    Each phrase gives its last word with up to ``max_words - 1`` words before it; phrases whose
    last word is in ``non_objects`` ("left", "background") name no object and give nothing.
    """
    queries: list[str] = []
    for phrase in caption_phrases(caption, stop_words):
        if phrase[-1] in non_objects:
            continue
        for length in range(min(max_words, len(phrase)), 0, -1):
            query = " ".join(phrase[-length:])
            if query not in queries:
                queries.append(query)
    return queries


def image_queries(captions: Iterable[str], max_words: int = 3, stop_words: frozenset[str] = STOP_WORDS,
                  non_objects: frozenset[str] = NON_OBJECT_WORDS) -> list[str]:
    """The queries of all of an image's captions, in the order they first appear."""
    queries: list[str] = []
    for caption in captions:
        queries.extend(q for q in caption_queries(caption, max_words, stop_words, non_objects) if q not in queries)
    return queries


def head_word(query: str) -> str:
    """The word a query names its object by: its last."""
    return query.rsplit(" ", 1)[-1]
