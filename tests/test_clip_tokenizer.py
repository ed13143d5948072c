"""The CLIP BPE tokenizer built from open_clip's vocabulary file gives open_clip's ids."""

import json
import logging
import re
import sys
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from mammut.data import CaptionTokenizer, clip_tokenizer
from mammut.data.clip_tokenizer import build_clip_tokenizer, clean_text

FIXTURES = Path(__file__).parent / "fixtures" / "openmammut"
VOCAB = FIXTURES / "bpe_simple_vocab_16e6.txt.gz"
CASES = json.loads((FIXTURES / "clip_tokenizer_cases.json").read_text())
CONTEXT = 77


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clip") / "tokenizer.json"
    build_clip_tokenizer(VOCAB).save(str(path))
    return path


@pytest.fixture(scope="module")
def built() -> CaptionTokenizer:
    return CaptionTokenizer(build_clip_tokenizer(VOCAB))


@pytest.fixture(scope="module")
def loaded(clip_file) -> CaptionTokenizer:
    """As the data modules load it: from the path alone."""
    return CaptionTokenizer.from_file(clip_file)


def test_the_cases_cover_the_hard_parts():
    captions = CASES["captions"]
    assert "" in captions
    assert any("&amp;" in c for c in captions) and any("\t" in c for c in captions)
    assert any(not c.isascii() for c in captions)
    assert any(row[-1] == 49407 for row in CASES["tokens_context77"])  # cut to fit


@pytest.mark.parametrize("source", ["built", "loaded"])
@pytest.mark.parametrize("index", range(len(CASES["captions"])))
def test_ids_are_open_clips(source, index, request):
    tokenizer = request.getfixturevalue(source)

    ids = tokenizer.pad(tokenizer.encode(CASES["captions"][index], CONTEXT), CONTEXT)

    assert ids == CASES["tokens_context77"][index]


def test_vocabulary_and_special_ids(built, loaded):
    for tokenizer in (built, loaded):
        assert tokenizer.vocab_size == 49408
        assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id, tokenizer.sep_id) == (49406, 49407, 0, 49407)
        assert tokenizer.unk_id is None


def test_encode_batch_gives_the_same_rows(loaded):
    tokens = loaded.encode_batch(CASES["captions"], CONTEXT)

    assert tokens.tolist() == CASES["tokens_context77"]


def test_the_file_alone_lower_cases_and_adds_the_special_tokens(clip_file):
    raw = Tokenizer.from_file(str(clip_file))

    ids = raw.encode("A  Photo of a CAT").ids

    assert ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert raw.decode(ids) == "a photo of a cat"


@pytest.mark.parametrize(
    ("caption", "decoded"),
    [
        ("  A Photo\tof a  CAT ", "a photo of a cat"),
        ("Tom &amp;amp; Jerry", "tom & jerry"),  # unescaped twice
        ("a cat!", "a cat !"),  # "!" ending a word is not the pad token "!"
        ("cafÃ© au lait", "café au lait"),  # mojibake fixed by ftfy
    ],
)
def test_decode_gives_the_cleaned_text(built, caption, decoded):
    assert built.decode(built.encode(caption, CONTEXT)) == decoded


def test_default_tokenizer_gets_no_clip_clean_up():
    texts = ["Tom &amp; Jerry", "tom and jerry", "a red circle"] * 20
    tokenizer = CaptionTokenizer.train(texts, vocab_size=300)

    assert not tokenizer.is_clip
    assert tokenizer.special_token_ids == {"pad": 0, "bos": 1, "eos": 2, "sep": 3}
    assert tokenizer.decode(tokenizer.encode("Tom &amp; Jerry", 32)) == "tom &amp; jerry"


@pytest.fixture
def without_ftfy(monkeypatch):
    monkeypatch.setitem(sys.modules, "ftfy", None)  # makes `import ftfy` fail
    clip_tokenizer._fix_text.cache_clear()
    yield
    clip_tokenizer._fix_text.cache_clear()


def test_without_ftfy_one_warning_and_the_rest_of_the_clean_up(without_ftfy, caplog):
    with caplog.at_level(logging.WARNING, logger="mammut.data.clip_tokenizer"):
        first, second = clean_text("cafÃ©  &amp;amp; Co"), clean_text("more")

    assert (first, second) == ("cafã© & co", "more")
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "pip install mammut[clip]" in warnings[0]


def test_cli_writes_the_tokenizer(tmp_path, capsys, loaded):
    out = tmp_path / "sub" / "clip.json"

    clip_tokenizer.main(["--vocab", str(VOCAB), "--out", str(out)])

    assert "49408" in capsys.readouterr().out
    assert CaptionTokenizer.from_file(out).encode(CASES["captions"][0], CONTEXT) == \
        loaded.encode(CASES["captions"][0], CONTEXT)


def test_cli_without_a_vocabulary_says_where_to_get_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(clip_tokenizer, "installed_open_clip_vocab", lambda: None)

    with pytest.raises(SystemExit):
        clip_tokenizer.main(["--out", str(tmp_path / "clip.json")])

    error = capsys.readouterr().err
    assert "bpe_simple_vocab_16e6.txt.gz" in error and "open_clip" in error
    assert not (tmp_path / "clip.json").exists()


def test_a_file_that_is_not_the_gzipped_vocabulary_is_refused_by_name(tmp_path):
    not_gzip = tmp_path / "bpe_simple_vocab_16e6.txt.gz"
    not_gzip.write_text("#version: 0.2\ni n\n")
    with pytest.raises(ValueError, match=f"{re.escape(str(not_gzip))}: not CLIP's gzipped BPE vocabulary"):
        build_clip_tokenizer(not_gzip)
