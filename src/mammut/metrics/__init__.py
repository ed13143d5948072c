"""Evaluation metrics as torchmetrics Metrics, with data-derived baselines to compare against."""

from mammut.metrics.caption_tokenization import tokenize_caption
from mammut.metrics.captioning import (
    CaptionBaseline,
    CaptionMetrics,
    most_frequent_caption_baseline,
    score_captions,
)
from mammut.metrics.retrieval import RetrievalRecallAtK, chance_recall_at_k

__all__ = [
    "CaptionBaseline",
    "CaptionMetrics",
    "RetrievalRecallAtK",
    "chance_recall_at_k",
    "most_frequent_caption_baseline",
    "score_captions",
    "tokenize_caption",
]
