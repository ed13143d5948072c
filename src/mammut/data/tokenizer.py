"""The caption tokenizer: byte-level BPE from the HF ``tokenizers`` library.

Normalisation is NFKC, lower-case, runs of whitespace collapsed to one space, and the ends
stripped; pre-tokenisation is byte-level (GPT-2 style). Byte-level BPE never produces an
unknown token, whatever the script or emoji in a user's captions, and decoding is exact:
``decode(encode(text))`` gives back the normalised text, punctuation attached where it
was, which is what captioning metrics and logged samples should show.

The special tokens live here and nowhere else. A trained tokenizer places them first:
``[PAD]`` = 0, ``[BOS]`` = 1, ``[EOS]`` = 2, ``[SEP]`` = 3, ``[UNK]`` = 4. A sequence is
``[BOS] tokens [EOS]``, right-padded with ``[PAD]``.

A vocabulary without these tokens but with CLIP's ``<|startoftext|>`` and ``<|endoftext|>``
(``mammut.data.clip_tokenizer``) is CLIP's: its roles are ``CLIP_SPECIAL_TOKENS`` (pad is id 0,
the token "!", so a "!" token is dropped when decoding) and its text gets open_clip's clean-up
before encoding, which gives open_clip's ids. Its decoded text has a space after every
pre-token, punctuation included ("double - decker"), as open_clip's has.

Train one on dataset files (captions, VQA questions and answers, video captions and QA,
category names), and check that the answers are whole tokens::

    python -m mammut.data.tokenizer --captions train.json --vqa questions.json --vqa answers.json \
        --vocab-size 4096 --out tokenizer.json --answers answers.json
    python -m mammut.data.tokenizer --check your/tokenizer.json --answers answers.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from mammut.data import clip_tokenizer
from mammut.data.coco import read_coco_captions
from mammut.data.errors import DataFormatError

DEFAULT_SPECIAL_TOKENS: dict[str, str] = {
    "pad": "[PAD]",
    "bos": "[BOS]",
    "eos": "[EOS]",
    "sep": "[SEP]",
    "unk": "[UNK]",
}
# The model needs these four; a byte-level vocabulary may have no unknown token at all.
REQUIRED_SPECIAL_TOKENS = ("pad", "bos", "eos", "sep")


class CaptionTokenizer:
    """Text <-> fixed-length token ids, with the special tokens handled in one place."""

    def __init__(self, tokenizer: Tokenizer, special_tokens: Mapping[str, str] | None = None, source: str = "tokenizer"):
        unknown_roles = set(special_tokens or {}) - set(DEFAULT_SPECIAL_TOKENS)
        if unknown_roles:
            raise ValueError(f"unknown special token roles {sorted(unknown_roles)}; expected {list(DEFAULT_SPECIAL_TOKENS)}")
        self._tokenizer = tokenizer
        # Recognised from the vocabulary alone, so that from_file(path) works for it.
        has_default_tokens = any(tokenizer.token_to_id(DEFAULT_SPECIAL_TOKENS[role]) is not None
                                 for role in REQUIRED_SPECIAL_TOKENS)
        self.is_clip = not has_default_tokens and clip_tokenizer.is_clip_vocabulary(tokenizer)
        base_roles = clip_tokenizer.CLIP_SPECIAL_TOKENS if self.is_clip else DEFAULT_SPECIAL_TOKENS
        self.special_tokens = {**base_roles, **(special_tokens or {})}
        ids = {role: tokenizer.token_to_id(token) for role, token in self.special_tokens.items()}
        missing = [f"{role} {self.special_tokens[role]!r}" for role in REQUIRED_SPECIAL_TOKENS if ids[role] is None]
        if missing:
            raise DataFormatError(
                f"{source}: special tokens missing from the vocabulary: {', '.join(missing)}; "
                "pass special_tokens={role: token} to map them to tokens the vocabulary has"
            )
        self._ids: dict[str, int | None] = ids
        # Ids that decode drops: every special token the vocabulary has.
        self._special_id_set = frozenset(i for i in ids.values() if i is not None)

    # ----------------------------------------------------------------- construction

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2) -> CaptionTokenizer:
        """Train a byte-level BPE on ``texts``; the special tokens take ids 0 to 4."""
        tokenizer = Tokenizer(models.BPE(unk_token=DEFAULT_SPECIAL_TOKENS["unk"]))
        tokenizer.normalizer = normalizers.Sequence(
            [normalizers.NFKC(), normalizers.Lowercase(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()]
        )
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(DEFAULT_SPECIAL_TOKENS.values()),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(texts, trainer=trainer)
        return cls(tokenizer, source="trained tokenizer")

    @classmethod
    def from_file(cls, path: str | os.PathLike, special_tokens: dict[str, str] | None = None) -> CaptionTokenizer:
        """Load any ``tokenizer.json``.

        ``special_tokens`` maps roles ("pad", "bos", "eos", "sep", "unk") to the token
        strings this file uses, e.g. ``{"bos": "<s>", "eos": "</s>"}``; roles not given
        keep the defaults ("[PAD]", ...). pad, bos, eos and sep must be in the vocabulary;
        the same token may serve several roles (GPT-2 uses one for all).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: tokenizer file not found")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as error:  # the Rust side raises a plain Exception
            raise DataFormatError(f"{path}: not a valid tokenizer.json ({error})") from error
        return cls(tokenizer, special_tokens, source=str(path))

    def save(self, path: str | os.PathLike) -> None:
        """Write ``tokenizer.json``. Special-token overrides are not stored in it."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._tokenizer.save(str(path))

    # ----------------------------------------------------------------- special tokens

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def pad_id(self) -> int:
        return self._ids["pad"]

    @property
    def bos_id(self) -> int:
        return self._ids["bos"]

    @property
    def eos_id(self) -> int:
        return self._ids["eos"]

    @property
    def sep_id(self) -> int:
        return self._ids["sep"]

    @property
    def unk_id(self) -> int | None:
        """None for a user vocabulary without an unknown token (byte-level BPE needs none)."""
        return self._ids.get("unk")

    @property
    def special_token_ids(self) -> dict[str, int]:
        return {role: self._ids[role] for role in REQUIRED_SPECIAL_TOKENS}

    # ----------------------------------------------------------------- encoding

    def id_to_token(self, token_id: int) -> str | None:
        """The vocabulary entry of one id (byte-level pieces show a leading space as "Ġ")."""
        return self._tokenizer.id_to_token(token_id)

    def token_ids(self, text: str) -> list[int]:
        """The ids of ``text`` alone, without special tokens."""
        # The file's own post-processor (e.g. BERT's [CLS] ... [SEP]) is bypassed: special
        # tokens are added by the callers, so every tokenizer gives the same layout.
        if self.is_clip:
            text = clip_tokenizer.clean_text(text)
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode(self, text: str, context_length: int,
               return_length: bool = False) -> list[int] | tuple[list[int], int]:
        """``[bos] tokens [eos]``, at most ``context_length`` ids; truncation keeps eos last.

        With ``return_length``, also the length before truncation (bos and eos included):
        the text was cut if it exceeds ``context_length``.
        """
        if context_length < 2:
            raise ValueError(f"context_length must be at least 2 (bos and eos), got {context_length}")
        ids = self.token_ids(text)
        encoded = [self.bos_id, *ids[: context_length - 2], self.eos_id]
        return (encoded, len(ids) + 2) if return_length else encoded

    def pad(self, ids: Sequence[int], context_length: int) -> list[int]:
        """Right-pad ``ids`` with pad_id to ``context_length``."""
        return [*ids, *[self.pad_id] * (context_length - len(ids))]

    def encode_batch(self, texts: Sequence[str], context_length: int,
                     return_lengths: bool = False) -> torch.Tensor | tuple[torch.Tensor, list[int]]:
        """LongTensor (N, context_length): each text encoded, then right-padded.

        With ``return_lengths``, also each text's length before truncation, as ``encode``'s.
        """
        # One text at a time on purpose: the library's parallel batch encoding, used before
        # DataLoader workers fork, disables it in them and prints a warning in each.
        encoded = [self.encode(text, context_length, return_length=True) for text in texts]
        rows = [self.pad(ids, context_length) for ids, _ in encoded]
        tokens = torch.tensor(rows, dtype=torch.long).reshape(len(rows), context_length)
        return (tokens, [length for _, length in encoded]) if return_lengths else tokens

    # ----------------------------------------------------------------- decoding

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Text of one sequence: stops at the first eos and drops all special tokens."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        if ids and ids[0] == self.bos_id:
            ids = ids[1:]  # before looking for eos, which may be the same token as bos
        if self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        ids = [i for i in ids if i not in self._special_id_set]
        text = self._tokenizer.decode(ids, skip_special_tokens=True)
        return " ".join(text.split())

    def decode_batch(self, batch: torch.Tensor | Iterable[Sequence[int]]) -> list[str]:
        """``decode`` for each row of a (N, T) tensor or each list of ids."""
        return [self.decode(row) for row in batch]

    def __repr__(self) -> str:
        return f"CaptionTokenizer(vocab_size={self.vocab_size}, special_token_ids={self.special_token_ids})"


def _captions_of(file: Path) -> Iterable[str]:
    # Images are not opened here, so the image root does not matter.
    records, _ = read_coco_captions(file, image_root=file.parent)
    for record in records:
        yield from record.captions


def _vqa_texts_of(file: Path) -> Iterable[str]:
    """A VQAv2 questions file's questions, or an annotations file's answers."""
    data = _json_of(file)
    for question in data.get("questions", []):
        yield question["question"]
    for annotation in data.get("annotations", []):
        yield from (answer["answer"] for answer in annotation.get("answers", []))
        if "multiple_choice_answer" in annotation:
            yield annotation["multiple_choice_answer"]


def _msrvtt_texts_of(file: Path) -> Iterable[str]:
    """An MSR-VTT ``videodatainfo`` file's captions."""
    yield from (sentence["caption"] for sentence in _json_of(file).get("sentences", []))


def _video_qa_texts_of(file: Path) -> Iterable[str]:
    """An MSRVTT-QA or MSVD-QA file's questions and answers."""
    for record in _json_of(file):
        yield record["question"]
        yield record["answer"]


def _category_names_of(file: Path) -> Iterable[str]:
    """A COCO or LVIS instances file's category names and synonyms (LVIS writes ``pet_food``)."""
    for category in _json_of(file).get("categories", []):
        yield from (name.replace("_", " ") for name in [category["name"], *category.get("synonyms", [])])


def _json_of(file: Path):
    try:
        return json.loads(Path(file).read_text())
    except (OSError, ValueError) as error:
        raise DataFormatError(f"{file}: cannot read it as JSON ({error})") from error


# A word, without the punctuation around it ("yes." and "yes!" are the word "yes").
WORD = re.compile(r"[\w']+")

# Command-line option -> the texts of one file in that format.
TEXT_SOURCES = {
    "captions": (_captions_of, "COCO captions JSON"),
    "vqa": (_vqa_texts_of, "VQAv2 questions or annotations JSON (questions, answers)"),
    "msrvtt": (_msrvtt_texts_of, "MSR-VTT videodatainfo JSON (captions)"),
    "video_qa": (_video_qa_texts_of, "MSRVTT-QA / MSVD-QA JSON (questions, answers)"),
    "instances": (_category_names_of, "COCO / LVIS instances JSON (category names)"),
    "answers_only": (lambda file: answers_of([file]), "VQAv2 annotations or video QA JSON (answers, not questions)"),
}


def texts_of(sources: Mapping[str, Iterable[Path]]) -> Iterable[str]:
    """Every text of the given files, by format (the keys of ``TEXT_SOURCES``)."""
    for kind, files in sources.items():
        read = TEXT_SOURCES[kind][0]
        for file in files:
            yield from read(Path(file))


def words_in_pieces(tokenizer: CaptionTokenizer, texts: Iterable[str]) -> dict[str, list[str]]:
    """The words of ``texts`` that the tokenizer spells in several pieces, each with its pieces.

    A model learns such a word as a sequence of fragments; a frozen decoder (parameter-efficient
    tuning) that never produced the fragments in that order has to be taught all of them.
    """
    split = {}
    for word in {word for text in texts for word in WORD.findall(text.lower())}:
        ids = tokenizer.token_ids(word)
        if len(ids) > 1:
            split[word] = [tokenizer.id_to_token(i) for i in ids]
    return dict(sorted(split.items()))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mammut.data.tokenizer",
        description="Train the tokenizer on the texts of dataset files, and check that answers are whole tokens.",
    )
    for kind, (_, help_text) in TEXT_SOURCES.items():
        parser.add_argument(f"--{kind.replace('_', '-')}", type=Path, action="append", default=[],
                            help=f"{help_text}; repeatable")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--min-frequency", type=int, default=2)
    parser.add_argument("--out", type=Path, help="where to write the trained tokenizer.json")
    parser.add_argument("--check", type=Path, help="an existing tokenizer.json to check instead of training one")
    parser.add_argument("--answers", type=Path, action="append", default=[],
                        help="VQAv2 annotations or video QA JSON whose answer words should each be one token; repeatable")
    parser.add_argument("--met-by", type=Path,
                        help="with --check: a checkpoint or weights file of a model using this tokenizer; prints "
                             "the share of the text files' tokens whose rows its training never met")
    args = parser.parse_args(argv)
    sources = {kind: getattr(args, kind) for kind in TEXT_SOURCES if getattr(args, kind)}
    if args.met_by and not (args.check and sources):
        parser.error("--met-by needs --check and at least one text file (--vqa, --captions, ...)")
    if args.check:
        tokenizer = CaptionTokenizer.from_file(args.check)
    else:
        if not sources or not args.out:
            parser.error("training needs --out and at least one text file (--captions, --vqa, ...)")
        tokenizer = CaptionTokenizer.train(texts_of(sources), args.vocab_size, args.min_frequency)
        tokenizer.save(args.out)
        print(f"wrote {args.out}: {tokenizer}")
    if args.answers:
        in_pieces = words_in_pieces(tokenizer, answers_of(args.answers))
        for word, pieces in in_pieces.items():
            print(f"answer word {word!r} is {len(pieces)} tokens: {pieces}")
        print(f"{len(in_pieces)} answer words are not single tokens" if in_pieces
              else "every answer word is a single token")
        if in_pieces and args.check:
            sys.exit(1)
    if args.met_by:
        met = met_rows(args.met_by)
        for kind, files in sources.items():
            for file in files:
                texts, tokens, unmet = unmet_share(tokenizer, TEXT_SOURCES[kind][0](file), met)
                print(f"{file}: {tokens / max(texts, 1):.2f} tokens a text, {unmet / max(tokens, 1):.1%} of them "
                      f"in rows the training of {args.met_by} never met ({int(met.sum())} of {len(met)} rows met)")


def met_rows(weights: Path) -> torch.Tensor:
    """Which vocabulary rows the training behind a checkpoint or weights file met (``TokenUse``)."""
    from mammut.model.token_use import NOT_RECORDED
    from mammut.model.weights_file import read_state_dict

    counts = [tensor for name, tensor in read_state_dict(weights).items() if name.endswith("token_use.counts")]
    if len(counts) != 1 or (counts[0] == NOT_RECORDED).any():
        raise DataFormatError(f"{weights}: it does not record which vocabulary rows its training met "
                              "(token_use.counts; files written by mammut fit keep it)")
    return counts[0] > 0


def unmet_share(tokenizer: CaptionTokenizer, texts: Iterable[str], met: torch.Tensor) -> tuple[int, int, int]:
    """How many texts, tokens and tokens in rows not ``met``, over ``texts``."""
    if tokenizer.vocab_size != len(met):
        raise DataFormatError(f"the tokenizer has {tokenizer.vocab_size} tokens, the weights {len(met)} rows: "
                              "they were not trained together")
    n_texts = n_tokens = n_unmet = 0
    for text in texts:
        ids = torch.tensor(tokenizer.token_ids(text), dtype=torch.long)
        n_texts, n_tokens, n_unmet = n_texts + 1, n_tokens + len(ids), n_unmet + int((~met[ids]).sum())
    return n_texts, n_tokens, n_unmet


def answers_of(files: Iterable[Path]) -> Iterable[str]:
    """The answers of VQAv2 annotations files and video QA files."""
    for file in files:
        data = _json_of(file)
        if isinstance(data, list):
            yield from (record["answer"] for record in data)
        else:
            for annotation in data.get("annotations", []):
                yield from (answer["answer"] for answer in annotation.get("answers", []))


if __name__ == "__main__":
    main()
