"""CaptionTokenizer with the real tokenizers library: layout, round trip, user files, CLI."""

import json
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
import torch
from coco_files import CAPTIONS, coco_captions, write_coco
from conftest import REPO
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from mammut.data import CaptionTokenizer, DataFormatError
from mammut.data.tokenizer import main as tokenizer_main, texts_of

TRAINING_TEXTS = [caption for captions in CAPTIONS.values() for caption in captions] * 10


@pytest.fixture(scope="module")
def tokenizer():
    return CaptionTokenizer.train(TRAINING_TEXTS, vocab_size=400, min_frequency=2)


def normalised(text):
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def test_special_token_ids_are_fixed(tokenizer):
    assert tokenizer.special_token_ids == {"pad": 0, "bos": 1, "eos": 2, "sep": 3}
    assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.sep_id, tokenizer.unk_id) == (0, 1, 2, 3, 4)
    # 256 bytes + 5 special tokens + merges, up to the requested size (these texts are few).
    assert 261 < tokenizer.vocab_size <= 400


@pytest.mark.parametrize(
    "caption",
    [
        "A large red circle.",
        "  a small   BLUE square\tto the left of a red star ",
        "two shapes: a green triangle, and a yellow hexagon!",
        "a zebra's ﬁne café 🦓 (unseen words)",
    ],
)
def test_decode_of_encode_is_the_normalised_caption(tokenizer, caption):
    ids = tokenizer.encode(caption, context_length=128)

    assert ids[0] == tokenizer.bos_id and ids[-1] == tokenizer.eos_id
    assert tokenizer.decode(ids) == normalised(caption)


def test_truncation_keeps_eos_last(tokenizer):
    caption = "a green triangle left of a star " * 10

    ids = tokenizer.encode(caption, context_length=8)

    assert len(ids) == 8
    assert ids[0] == tokenizer.bos_id and ids[-1] == tokenizer.eos_id
    assert tokenizer.eos_id not in ids[:-1]
    assert normalised(caption).startswith(tokenizer.decode(ids))


def test_encode_batch_right_pads_after_eos(tokenizer):
    texts = ["red circle", "a green triangle left of a star and a yellow star"]

    tokens = tokenizer.encode_batch(texts, context_length=10)

    assert tokens.dtype == torch.long and tokens.shape == (2, 10)
    short = tokenizer.encode("red circle", 10)
    assert tokens[0, : len(short)].tolist() == short
    assert (tokens[0, len(short) :] == tokenizer.pad_id).all()
    assert tokens[1, -1] == tokenizer.eos_id  # truncated, not padded
    assert tokenizer.decode_batch(tokens) == [normalised(texts[0]), tokenizer.decode(tokens[1])]
    assert tokenizer.decode_batch(tokens.tolist()) == tokenizer.decode_batch(tokens)


def test_encode_batch_of_nothing_has_the_right_shape(tokenizer):
    assert tokenizer.encode_batch([], context_length=6).shape == (0, 6)


def test_decode_stops_at_the_first_eos_and_drops_special_tokens(tokenizer):
    first, second = tokenizer.encode("red circle", 16), tokenizer.encode("blue square", 16)
    with_sep = [first[0], *first[1:-1], tokenizer.sep_id, *second[1:]]

    assert tokenizer.decode(first + second[1:]) == "red circle"
    assert tokenizer.decode(with_sep) == "red circle blue square"
    assert tokenizer.decode([tokenizer.bos_id, tokenizer.eos_id, *first]) == ""


def test_context_length_below_two_is_refused(tokenizer):
    with pytest.raises(ValueError, match="context_length"):
        tokenizer.encode("red", 1)


def test_save_and_load_give_the_same_tokenizer(tokenizer, tmp_path):
    tokenizer.save(tmp_path / "sub" / "tokenizer.json")

    loaded = CaptionTokenizer.from_file(tmp_path / "sub" / "tokenizer.json")

    caption = "a large red circle, left of a blue square"
    assert loaded.encode(caption, 32) == tokenizer.encode(caption, 32)
    assert loaded.special_token_ids == tokenizer.special_token_ids
    assert loaded.vocab_size == tokenizer.vocab_size


def write_bert_style_tokenizer(path):
    """A WordPiece tokenizer.json with BERT's special tokens and post-processor."""
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=200, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tokenizer.train_from_iterator(TRAINING_TEXTS, trainer=trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    tokenizer.save(str(path))
    return tokenizer


def test_user_tokenizer_without_our_special_tokens_names_the_missing_ones(tmp_path):
    path = tmp_path / "bert.json"
    write_bert_style_tokenizer(path)

    with pytest.raises(DataFormatError) as error:
        CaptionTokenizer.from_file(path)

    message = str(error.value)
    assert str(path) in message
    assert "bos '[BOS]'" in message and "eos '[EOS]'" in message
    assert "pad" not in message.split("vocabulary:")[1].split(";")[0]  # [PAD] and [SEP] exist


def test_user_tokenizer_with_mapped_special_tokens(tmp_path):
    path = tmp_path / "bert.json"
    raw = write_bert_style_tokenizer(path)

    tokenizer = CaptionTokenizer.from_file(path, special_tokens={"bos": "[CLS]", "eos": "[SEP]", "sep": "[MASK]"})

    ids = tokenizer.encode("A small blue square.", 16)
    assert tokenizer.bos_id == raw.token_to_id("[CLS]") and tokenizer.eos_id == raw.token_to_id("[SEP]")
    # The file's own post-processor would add a second [CLS] ... [SEP].
    assert ids.count(tokenizer.bos_id) == 1 and ids.count(tokenizer.eos_id) == 1
    assert ids[0] == tokenizer.bos_id and ids[-1] == tokenizer.eos_id
    assert tokenizer.decode(ids) == "a small blue square."
    # "squares" is split into word pieces; decoding joins them without "##".
    assert any(piece.startswith("##") for piece in raw.encode("Two blue squares.").tokens)
    assert tokenizer.decode(tokenizer.encode_batch(["Two blue squares."], 16)[0]) == "two blue squares."


def test_user_tokenizer_with_one_token_for_every_role(tmp_path):
    """GPT-2 style: one <|endoftext|> is bos, eos and pad at once."""
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=350, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    raw.train_from_iterator(TRAINING_TEXTS, trainer=trainer)
    raw.save(str(tmp_path / "gpt2.json"))
    roles = {role: "<|endoftext|>" for role in ("pad", "bos", "eos", "sep")}

    tokenizer = CaptionTokenizer.from_file(tmp_path / "gpt2.json", special_tokens=roles)

    assert tokenizer.unk_id is None
    tokens = tokenizer.encode_batch(["A red circle"], 12)[0]
    assert tokenizer.decode(tokens) == "A red circle"


def test_loading_a_file_that_is_not_a_tokenizer(tokenizer, tmp_path):
    (tmp_path / "bad.json").write_text('{"not": "a tokenizer"}')

    with pytest.raises(DataFormatError, match="bad.json"):
        CaptionTokenizer.from_file(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="absent.json"):
        CaptionTokenizer.from_file(tmp_path / "absent.json")
    tokenizer.save(tmp_path / "good.json")
    with pytest.raises(ValueError, match="unknown special token roles"):
        CaptionTokenizer.from_file(tmp_path / "good.json", special_tokens={"cls": "[CLS]"})


def test_cli_trains_on_the_captions_of_every_given_file(tmp_path):
    zebras = write_coco(tmp_path / "a.json", coco_captions({1: ["a zebra"] * 5, 2: ["one zebra"] * 5}))
    giraffes = write_coco(tmp_path / "b.json", coco_captions({1: ["a giraffe"] * 5}))
    out = tmp_path / "tokenizer.json"

    subprocess.run(
        [sys.executable, "-m", "mammut.data.tokenizer", "--captions", str(zebras), "--captions", str(giraffes),
         "--vocab-size", "300", "--out", str(out)],
        check=True, capture_output=True, timeout=60,
    )

    tokenizer = CaptionTokenizer.from_file(out)
    # Frequent words of both files became single tokens: [bos] word [eos].
    assert len(tokenizer.encode("zebra", 8)) == 3
    assert len(tokenizer.encode("giraffe", 8)) == 3
    assert len(tokenizer.encode("elephant", 8)) > 3


def test_met_by_gives_the_share_of_tokens_in_rows_the_training_never_met(tokenizer, tmp_path, capsys):
    tokenizer_file = tmp_path / "tokenizer.json"
    tokenizer.save(tokenizer_file)
    met = tokenizer.token_ids("a red circle")
    counts = torch.zeros(tokenizer.vocab_size, dtype=torch.long)
    counts[met] = 7  # the training's text: "a red circle", and nothing else
    checkpoint = tmp_path / "run.ckpt"
    torch.save({"state_dict": {"model.token_use.counts": counts}}, checkpoint)
    questions = tmp_path / "questions.json"
    questions.write_text(json.dumps({"questions": [{"question": "a red circle"}, {"question": "a blue square"}]}))
    square = tokenizer.token_ids("a blue square")
    assert len(set(square) - set(met)) >= 2  # "blue" and "square" are rows of their own

    tokenizer_main(["--check", str(tokenizer_file), "--met-by", str(checkpoint), "--vqa", str(questions)])
    tokens = len(met) + len(square)
    unmet = sum(i not in met for i in square)
    printed = capsys.readouterr().out
    assert f"{tokens / 2:.2f} tokens a text, {unmet / tokens:.1%} of them in rows" in printed
    assert f"({len(set(met))} of {tokenizer.vocab_size} rows met)" in printed

    counts.fill_(-1)  # a file from before the counts were kept
    torch.save({"state_dict": {"model.token_use.counts": counts}}, checkpoint)
    with pytest.raises(DataFormatError, match="run.ckpt: it does not record which vocabulary rows"):
        tokenizer_main(["--check", str(tokenizer_file), "--met-by", str(checkpoint), "--vqa", str(questions)])
    torch.save({"state_dict": {"model.token_use.counts": torch.ones(9, dtype=torch.long)}}, checkpoint)
    with pytest.raises(DataFormatError, match="the weights 9 rows"):
        tokenizer_main(["--check", str(tokenizer_file), "--met-by", str(checkpoint), "--vqa", str(questions)])


def test_answers_only_reads_the_answers_of_vqa_and_video_qa_files_not_their_questions(tmp_path):
    vqa = tmp_path / "annotations.json"
    vqa.write_text(json.dumps({"annotations": [{"question_id": 1, "multiple_choice_answer": "yes",
                                                "answers": [{"answer": "yes"}, {"answer": "no"}]}]}))
    video = tmp_path / "video_qa.json"
    video.write_text(json.dumps([{"video": "v0", "question": "where does it move", "answer": "up"}]))
    assert list(texts_of({"answers_only": [vqa, video]})) == ["yes", "no", "up"]


def test_make_trains_the_demo_tokenizer_on_the_captions_alone_and_again_only_when_its_arguments_change(tmp_path):
    """`make data` trains the demo tokenizer on the captions alone. A demo world whose tokenizer
    was trained with other arguments (an older default's) gets today's; one trained with today's
    arguments is left as it is."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    demo = tmp_path / "demo"
    write_coco(demo / "annotations" / "captions_train.json", coco_captions({1: ["a zebra"] * 5, 2: ["one giraffe"] * 5}))
    (demo / "video").mkdir()
    (demo / "video" / "train_qa.json").write_text("[]")  # the demo world is written: make leaves it alone
    tokenizer, arguments = demo / "tokenizer.json", demo / ".tokenizer-arguments"

    def make() -> None:
        # STAMP: an existing file, so that make never installs into the running interpreter's environment.
        subprocess.run(["make", "-C", str(REPO), f"DEMO={demo}", f"BIN={Path(sys.executable).parent}",
                        f"STAMP={REPO / 'Makefile'}", str(tokenizer)], check=True, capture_output=True, timeout=120)

    make()
    captions_only = tmp_path / "captions_only.json"
    tokenizer_main(["--captions", str(demo / "annotations" / "captions_train.json"), "--out", str(captions_only)])
    assert tokenizer.read_bytes() == captions_only.read_bytes()
    trained = tokenizer.stat().st_mtime_ns
    make()
    assert tokenizer.stat().st_mtime_ns == trained

    tokenizer.write_text("an older default's tokenizer")
    arguments.write_text("--captions old.json --vqa questions.json\n")
    make()
    assert CaptionTokenizer.from_file(tokenizer).vocab_size > 4
    assert arguments.read_text().split() == ["--captions", f"{demo}/annotations/captions_train.json"]


def test_the_demo_answer_words_are_in_pieces_of_the_caption_tokenizer_and_whole_with_answers_only(tiny_demo, tmp_path):
    """The default tokenizer spells answer words such as "yes" in pieces (full fine-tuning and
    LoRA learn them); one of the captions and the answers, for a frozen decoder with a prefix
    alone, has every answer word whole, which ``--check`` confirms."""
    captions = str(tiny_demo / "annotations" / "captions_train.json")
    answers = [str(tiny_demo / "vqa" / "v2_mscoco_train_annotations.json"), str(tiny_demo / "video" / "train_qa.json")]
    checks = [arg for file in answers for arg in ("--answers", file)]
    captions_only, answers_whole = tmp_path / "captions_only.json", tmp_path / "captions_answers.json"
    tokenizer_main(["--captions", captions, "--out", str(captions_only)])
    with pytest.raises(SystemExit):
        tokenizer_main(["--check", str(captions_only), *checks])
    tokenizer_main(["--captions", captions, *[arg for file in answers for arg in ("--answers-only", file)],
                    "--out", str(answers_whole)])
    tokenizer_main(["--check", str(answers_whole), *checks])  # covered: returns
