"""Caption tokenisation for CIDEr-D and BLEU, close to the COCO caption evaluation.

The COCO evaluation (pycocoevalcap) runs Stanford's PTBTokenizer, which needs Java,
with lower-casing, then drops punctuation tokens (. , ? ! : ; - -- ... quotes and
brackets). This pure-Python version follows the same rules where captions use them:

- lower-case;
- split English clitics off as PTB does: "dog's" -> "dog 's", "don't" -> "do n't";
- keep words with inner hyphens or apostrophes ("t-shirt", "o'neil") and numbers with
  inner points or commas ("3.5", "1,000") whole;
- keep the symbols PTB keeps as tokens (& % $ # @ + =);
- drop all other punctuation.

The result is the tokens joined by single spaces, the input pycocoevalcap's scorers expect.
"""

from __future__ import annotations

import re

_CLITIC = re.compile(r"(?<=[^\W_])(n't|'(?:s|re|ve|ll|d|m))(?![^\W_])")
_TOKEN = re.compile(
    r"\d+(?:[.,]\d+)+"  # numbers with inner points or commas
    r"|n't|'(?:s|re|ve|ll|d|m)(?![^\W_])"  # clitics split off above
    r"|[^\W_]+(?:['-][^\W_]+)*"  # words, hyphenated words
    r"|[&%$#@+=]"  # symbols PTB keeps as tokens
)


def tokenize_caption(text: str) -> str:
    """Lower-cased caption tokens without punctuation, joined by single spaces."""
    separated = _CLITIC.sub(r" \1", text.lower())
    return " ".join(_TOKEN.findall(separated))
