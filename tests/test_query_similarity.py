"""The detector's class queries, and how close they are: what `query_similarity` prints."""

import pytest
import torch
import yaml
from conftest import REPO
from test_model import tiny_config

from mammut.data.tokenizer import CaptionTokenizer
from mammut.model import Mammut
from mammut.tasks.detection.query_similarity import RECIPE_TEMPLATES, query_similarity, similarity_table
from mammut.tasks.detection.task import class_queries


@pytest.fixture
def model_and_tokenizer(tiny_demo):
    tokenizer = CaptionTokenizer.from_file(tiny_demo / "tokenizer.json")
    ids = tokenizer.special_token_ids
    torch.manual_seed(0)
    model = Mammut(tiny_config(vocab_size=tokenizer.vocab_size, pad_id=ids["pad"], bos_id=ids["bos"],
                               eos_id=ids["eos"])).eval()
    return model, tokenizer


@torch.no_grad()
def test_a_class_query_is_the_normalised_mean_of_its_prompts_embeddings(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    prompts = [["a circle", "a small circle"], ["a star", "a large star"]]
    queries = class_queries(model, tokenizer, 16, prompts)
    for query, own in zip(queries, prompts):
        embeddings = model.text_embedding(tokenizer.encode_batch(own, 16))
        assert torch.allclose(query, torch.nn.functional.normalize(embeddings.mean(0), dim=-1), atol=1e-6)
    with pytest.raises(ValueError, match=r"as many prompts, got \[2, 1\]"):
        class_queries(model, tokenizer, 16, [["a circle", "a small circle"], ["a star"]])


@torch.no_grad()
def test_the_similarity_table_holds_each_pair_of_classes_cosine(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    names = ["circle", "square", "star"]
    similarity = query_similarity(model, tokenizer, names, ["a {}", "a small {}"])
    queries = class_queries(model, tokenizer, model.config.context_length,
                            [[f"a {name}", f"a small {name}"] for name in names])
    assert torch.allclose(similarity, queries @ queries.T)
    assert torch.allclose(similarity.diagonal(), torch.ones(3), atol=1e-6)
    assert similarity[0, 1] < 1 - 1e-4  # random weights still tell the names apart
    table = similarity_table(names, similarity).splitlines()
    assert table[0] == "| | circle | square | star |" and len(table) == 5
    assert table[3].startswith("| square | ") and f"{similarity[1, 2].item():.3f}" in table[3]


def test_the_default_templates_are_the_detection_recipes():
    recipe = yaml.safe_load((REPO / "configs/finetune_detection.yaml").read_text())
    assert RECIPE_TEMPLATES == recipe["model"]["init_args"]["templates"]
