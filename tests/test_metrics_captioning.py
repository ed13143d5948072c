"""CaptionMetrics: agreement with pycocoevalcap's scorers, IDF over the whole set,
tokenisation, the most-frequent-caption baseline, and gathering across DDP ranks."""

import pytest
import torch
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider

from mammut.metrics import (
    CaptionMetrics,
    most_frequent_caption_baseline,
    score_captions,
    tokenize_caption,
)

from distributed import on_two_ranks

REFERENCES = [
    ["A man riding a wave on top of a surfboard.", "A surfer rides a large wave.", "Man surfing on a big wave."],
    ["A dog catches a frisbee in the park.", "A brown dog jumping for a frisbee.", "Dog leaping to catch a disc."],
    ["Two people sitting on a bench.", "A couple rests on a park bench.", "Two friends sit on a wooden bench."],
    ["A plate of broccoli and rice.", "Broccoli, rice and chicken on a plate.", "A plate with vegetables."],
    ["A red bus driving down the street.", "A double decker bus on a city road.", "A bus drives down a busy street."],
    ["A cat sleeping on a laptop keyboard.", "A cat lying on a computer.", "Cat napping on top of a laptop."],
]
PREDICTIONS = [
    "a man riding a wave on a surfboard",
    "a dog jumping to catch a frisbee",
    "two people sitting on a park bench",
    "a plate of rice and broccoli",
    "a bus driving down a city street",
    "a dog sitting on a bench",
]


def direct_scores(predictions, references):
    """pycocoevalcap's scorers called by hand on the same tokenised captions."""
    predicted = {i: [tokenize_caption(p)] for i, p in enumerate(predictions)}
    referenced = {i: [tokenize_caption(r) for r in refs] for i, refs in enumerate(references)}
    cider, _ = Cider().compute_score(referenced, predicted)
    bleu, _ = Bleu(4).compute_score(referenced, predicted, verbose=0)
    return {"CIDEr-D": cider, "BLEU-4": bleu[3]}


def as_floats(result):
    return {key: value.item() for key, value in result.items()}


def test_tokenisation_strips_punctuation_and_case():
    assert tokenize_caption("A Man, riding a WAVE... on a surf-board!") == "a man riding a wave on a surf-board"
    assert tokenize_caption('He said "Hi" -- (twice); 3.5 kg?') == "he said hi twice 3.5 kg"
    # Clitics are split off as the PTB tokenizer does.
    assert tokenize_caption("The dog's bowl isn't empty.") == "the dog 's bowl is n't empty"
    assert tokenize_caption("  A\tcat \n") == "a cat"


def test_tokenisation_changes_the_score():
    # Case and punctuation must not cost the prediction anything.
    plain = score_captions(["a man riding a wave"], [["a man riding a wave"]])
    shouted = score_captions(["A MAN, riding a wave!"], [["A man riding a wave."]])
    assert shouted == plain


def test_agrees_with_pycocoevalcap_scorers():
    metric = CaptionMetrics()
    metric.update(PREDICTIONS, REFERENCES)
    result = as_floats(metric.compute())
    expected = direct_scores(PREDICTIONS, REFERENCES)
    assert result == pytest.approx(expected, rel=1e-6)
    assert 0 < result["BLEU-4"] < 1 and result["CIDEr-D"] > 0.5


def test_batched_updates_equal_one_update():
    metric = CaptionMetrics()
    for start in range(0, len(PREDICTIONS), 2):
        metric.update(PREDICTIONS[start : start + 2], REFERENCES[start : start + 2])
    result = as_floats(metric.compute())
    assert result == pytest.approx(direct_scores(PREDICTIONS, REFERENCES), rel=1e-6)
    # The IDF depends on the whole reference set: the mean of per-batch CIDEr-D differs,
    # so an implementation that scored batch by batch would fail the check above.
    per_batch = [direct_scores(PREDICTIONS[s : s + 2], REFERENCES[s : s + 2])["CIDEr-D"] for s in range(0, 6, 2)]
    assert sum(per_batch) / len(per_batch) != pytest.approx(result["CIDEr-D"], rel=1e-3)


def test_reset_clears_the_evaluation_set():
    metric = CaptionMetrics()
    metric.update(["a cat on a bed"], [["a dog on a sofa"]])
    metric.reset()
    metric.update(PREDICTIONS, REFERENCES)
    assert as_floats(metric.compute()) == pytest.approx(direct_scores(PREDICTIONS, REFERENCES), rel=1e-6)


def test_the_metric_moves_between_devices_and_dtypes_holding_its_captions():
    # Lightning moves the whole module to the CPU when a run ends, also one stopped by a signal in
    # the middle of a validation, while the metric holds that validation's captions.
    metric = CaptionMetrics()
    metric.update(PREDICTIONS, REFERENCES, sample_ids=list(range(len(PREDICTIONS))))
    holder = torch.nn.ModuleDict({"captions": metric})
    holder.cpu()
    holder.to(torch.device("cpu"), torch.float64)
    holder.float()
    assert metric.predictions == PREDICTIONS
    assert as_floats(metric.compute()) == pytest.approx(direct_scores(PREDICTIONS, REFERENCES), rel=1e-6)


def test_perfect_prediction_gets_full_bleu():
    sentence = "A man riding a wave on top of a surfboard."
    scores = score_captions([sentence, "a cat"], [[sentence, "a surfer on a wave"], ["a dog on a bed"]])
    perfect = score_captions([sentence], [[sentence]])
    assert perfect["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert scores["BLEU-4"] < 0.9


def test_repeated_sample_ids_count_once():
    metric = CaptionMetrics()
    ids = list(range(len(PREDICTIONS)))
    metric.update(PREDICTIONS, REFERENCES, sample_ids=ids)
    # A padding sampler repeats the first samples at the end of the set.
    metric.update(PREDICTIONS[:2], REFERENCES[:2], sample_ids=ids[:2])
    assert as_floats(metric.compute()) == pytest.approx(direct_scores(PREDICTIONS, REFERENCES), rel=1e-6)


def test_most_frequent_caption_baseline():
    train_captions = ["A dog on the grass.", "a cat", "a dog on the grass", "A man surfing.", "a cat."]
    train_captions += ["A dog on the grass!"]
    baseline = most_frequent_caption_baseline(train_captions, REFERENCES)
    # Three spellings of one caption outnumber the two of "a cat".
    assert baseline.caption == "a dog on the grass"
    expected = direct_scores([baseline.caption] * len(REFERENCES), REFERENCES)
    assert baseline.scores == pytest.approx(expected, rel=1e-6)
    model = score_captions(PREDICTIONS, REFERENCES)
    assert model["CIDEr-D"] > baseline.scores["CIDEr-D"]


def test_bad_input_is_an_error():
    metric = CaptionMetrics()
    with pytest.raises(ValueError, match="2 predictions but 1"):
        metric.update(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="sample 1"):
        metric.update(["a", "b"], [["a"], []])
    with pytest.raises(ValueError, match="sample 0"):
        metric.update(["a"], ["a cat"])


def _compute_on_one_rank(rank):
    metric = CaptionMetrics()
    # Rank 0 scores the first 4 images, rank 1 the last 2, each in two batches; rank 1 also
    # repeats image 0, as DistributedSampler's padding would.
    indices = [[0, 1], [2, 3]] if rank == 0 else [[4], [5, 0]]
    for batch in indices:
        metric.update([PREDICTIONS[i] for i in batch], [REFERENCES[i] for i in batch], sample_ids=batch)
    return as_floats(metric.compute())


@pytest.mark.slow
def test_ddp_gathers_every_rank(tmp_path):
    results = on_two_ranks(_compute_on_one_rank, tmp_path)
    expected = direct_scores(PREDICTIONS, REFERENCES)
    for rank in (0, 1):
        assert results[rank] == pytest.approx(expected, rel=1e-6)
