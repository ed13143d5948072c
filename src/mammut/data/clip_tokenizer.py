"""The CLIP BPE tokenizer (OpenAI CLIP, open_clip's ``SimpleTokenizer``) as a ``tokenizer.json``.

LAION's openMaMMUT checkpoints use this tokenizer: 49,408 tokens, ``<|startoftext|>`` = 49406,
``<|endoftext|>`` = 49407, sequences right-padded with 0, an over-long text cut so that
``<|endoftext|>`` stays last. Build it from the vocabulary file open_clip ships::

    python -m mammut.data.clip_tokenizer --vocab bpe_simple_vocab_16e6.txt.gz --out clip_tokenizer.json

Without ``--vocab``, the file of an installed ``open_clip`` package is used.

``CaptionTokenizer.from_file`` recognises the result by its ``<|startoftext|>`` and
``<|endoftext|>`` tokens, gives it the roles in ``CLIP_SPECIAL_TOKENS`` and applies
``clean_text`` before encoding: open_clip's clean-up (ftfy, HTML unescaping), which a
``tokenizer.json`` cannot express. Together they give open_clip's token ids exactly.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import html
import importlib.util
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

log = logging.getLogger(__name__)

VOCAB_FILE_NAME = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SIZE = 49408
START_OF_TEXT = "<|startoftext|>"
END_OF_TEXT = "<|endoftext|>"
END_OF_WORD = "</w>"

# Roles for CaptionTokenizer. open_clip pads with 0, which is the token "!": a "!" token
# therefore counts as padding and is dropped when decoding ("!" ending a word is "!</w>",
# another token). CLIP has no separator, so VQA puts <|endoftext|> between question and
# answer. There is no unknown token: byte-level BPE needs none.
CLIP_SPECIAL_TOKENS = {"pad": "!", "bos": START_OF_TEXT, "eos": END_OF_TEXT, "sep": END_OF_TEXT}

# open_clip's pre-tokenisation. It matches case-insensitively, but the text is lower-cased
# before, so the flag would change nothing.
WORD_PATTERN = r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"


def is_clip_vocabulary(tokenizer: Tokenizer) -> bool:
    return tokenizer.token_to_id(START_OF_TEXT) is not None and tokenizer.token_to_id(END_OF_TEXT) is not None


@functools.cache
def _fix_text():
    """ftfy.fix_text, or the identity with one warning when ftfy is not installed."""
    try:
        import ftfy
    except ImportError:
        log.warning("ftfy is not installed: text for the CLIP tokenizer is not ftfy-fixed, so text with broken "
                    "unicode may get other ids than open_clip's; pip install mammut[clip] to install it")
        return lambda text: text
    return ftfy.fix_text


def clean_text(text: str) -> str:
    """open_clip's clean-up: ftfy, HTML entities unescaped twice, whitespace collapsed, lower case."""
    text = html.unescape(html.unescape(_fix_text()(text)))
    # Done here rather than left to the tokenizer's normalizer: Python's idea of whitespace and
    # of lower case is open_clip's, the Rust library's differs on a few characters.
    return " ".join(text.split()).lower()


def byte_characters() -> list[str]:
    """GPT-2's printable stand-in for each byte, in CLIP's vocabulary order: the bytes that
    are printable characters stand for themselves and come first; the others get 256, 257, ..."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]


def read_merges(vocab_path: str | os.PathLike) -> list[tuple[str, str]]:
    """The merges CLIP uses: the lines after the version header, as many as fill 49,408 tokens."""
    merge_count = VOCAB_SIZE - 2 * 256 - 2  # the bytes, the bytes ending a word, the two special tokens
    try:
        with gzip.open(vocab_path, "rt", encoding="utf-8") as file:
            lines = file.read().split("\n")[1 : merge_count + 1]
    except (OSError, EOFError, UnicodeDecodeError) as error:  # not gzip, truncated, or not text
        raise ValueError(f"{vocab_path}: not CLIP's gzipped BPE vocabulary ({error})") from error
    merges = [tuple(line.split()) for line in lines]
    if len(merges) != merge_count or any(len(merge) != 2 for merge in merges):
        raise ValueError(f"{vocab_path}: expected {merge_count} merges of two symbols after the header line")
    return merges


def build_clip_tokenizer(vocab_path: str | os.PathLike) -> Tokenizer:
    merges = read_merges(vocab_path)
    tokens = byte_characters()
    tokens += [token + END_OF_WORD for token in tokens]
    tokens += ["".join(merge) for merge in merges]
    tokens += [START_OF_TEXT, END_OF_TEXT]
    vocab = {token: i for i, token in enumerate(tokens)}
    assert len(vocab) == VOCAB_SIZE, "CLIP's tokens are distinct"

    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, end_of_word_suffix=END_OF_WORD))
    tokenizer.add_special_tokens([START_OF_TEXT, END_OF_TEXT])
    # clean_text does all this already; the file repeats it for use without CaptionTokenizer.
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip(), normalizers.Lowercase()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    # Bytes first ("</w>" is plain ASCII in the byte alphabet), which joins the tokens into one
    # string; then the last "</w>" goes and the others become the spaces between words.
    tokenizer.decoder = decoders.Sequence([
        decoders.ByteLevel(), decoders.Replace(Regex(f"{END_OF_WORD}$"), ""), decoders.Replace(END_OF_WORD, " "),
    ])
    # For use without CaptionTokenizer, which adds the special tokens itself.
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{START_OF_TEXT} $A {END_OF_TEXT}",
        special_tokens=[(START_OF_TEXT, vocab[START_OF_TEXT]), (END_OF_TEXT, vocab[END_OF_TEXT])],
    )
    return tokenizer


def installed_open_clip_vocab() -> Path | None:
    """The vocabulary file of an installed open_clip, found without importing it (slow)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / VOCAB_FILE_NAME
    return path if path.is_file() else None


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mammut.data.clip_tokenizer",
        description="Write CLIP's BPE tokenizer (open_clip's, as openMaMMUT uses) as a tokenizer.json.",
    )
    parser.add_argument("--vocab", type=Path, help=f"{VOCAB_FILE_NAME}; default: the installed open_clip's")
    parser.add_argument("--out", type=Path, required=True, help="where to write tokenizer.json")
    args = parser.parse_args(argv)
    vocab = args.vocab or installed_open_clip_vocab()
    if vocab is None:
        parser.error(f"no --vocab given and no installed open_clip has {VOCAB_FILE_NAME}: get the file from "
                     "https://github.com/mlfoundations/open_clip (src/open_clip/) or "
                     "https://github.com/openai/CLIP (clip/), or pip install open_clip_torch")
    if not vocab.is_file():
        parser.error(f"{vocab}: vocabulary file not found")
    tokenizer = build_clip_tokenizer(vocab)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(args.out))
    print(f"wrote {args.out}: CLIP BPE, {tokenizer.get_vocab_size()} tokens")


if __name__ == "__main__":
    main()
