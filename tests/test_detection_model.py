"""The detection heads and the set-based loss: matching, the federated and crowd rules, box biases."""

import torch

from mammut.model import Mammut, MammutConfig
from mammut.model.detection_head import PRIOR_LOGIT, DetectionHead, grid_box_bias
from mammut.model.set_loss import SetLossWeights, hungarian_match, set_loss

WEIGHTS = SetLossWeights()
CONFIDENT = 8.0  # a logit whose sigmoid is 0.9997


def logits_for(labels_of_predictions: list[int | None], num_classes: int) -> torch.Tensor:
    """(N, K): each prediction sure of its class (None: sure of nothing)."""
    logits = torch.full((len(labels_of_predictions), num_classes), -CONFIDENT)
    for row, label in enumerate(labels_of_predictions):
        if label is not None:
            logits[row, label] = CONFIDENT
    return logits


def test_a_perfect_prediction_matches_one_to_one_and_costs_about_nothing():
    targets = torch.tensor([[0.2, 0.3, 0.1, 0.2], [0.7, 0.6, 0.3, 0.2], [0.5, 0.8, 0.2, 0.1]])
    labels = torch.tensor([2, 0, 1])
    # The predictions hold the targets in another order, among two predictions of nothing.
    order = [4, 0, 2, 1, 3]  # prediction p holds target order[p] (3 and 4: background)
    boxes = torch.stack([targets[t] if t < 3 else torch.tensor([0.9, 0.1, 0.05, 0.05]) for t in order])
    logits = logits_for([labels[t].item() if t < 3 else None for t in order], num_classes=3)
    rows, columns = hungarian_match(logits, boxes, labels, targets, WEIGHTS)
    assert sorted(zip(rows.tolist(), columns.tolist())) == [(1, 0), (2, 2), (3, 1)]
    losses = set_loss(logits[None], boxes[None], [labels], [targets], torch.ones(1, 3, dtype=torch.bool),
                      [torch.zeros(0, 4)], WEIGHTS, num_boxes=3)
    assert losses["l1"] < 1e-6 and losses["giou"] < 1e-6 and losses["focal"] < 1e-4


def test_matching_prefers_the_right_box_over_the_right_class():
    target, label = torch.tensor([[0.3, 0.3, 0.2, 0.2]]), torch.tensor([0])
    boxes = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.8, 0.8, 0.2, 0.2]])
    logits = torch.tensor([[0.0], [2.0]])  # the far box fairly sure of the class (0.88), the right box unsure
    rows, columns = hungarian_match(logits, boxes, label, target, WEIGHTS)
    assert rows.tolist() == [0] and columns.tolist() == [0]


def test_an_unknown_class_adds_no_loss_and_a_known_one_does():
    # One object of class 0; prediction 1 fires for class 1, which the image's annotation may not cover.
    targets, labels = torch.tensor([[0.3, 0.3, 0.2, 0.2]]), torch.tensor([0])
    boxes = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2]])
    logits = logits_for([0, 1], num_classes=2)
    def focal(known: list[bool]) -> float:
        return float(set_loss(logits[None], boxes[None], [labels], [targets], torch.tensor([known]),
                              [torch.zeros(0, 4)], WEIGHTS, num_boxes=1)["focal"])
    assert focal([True, False]) < 1e-3  # class 1 neither there nor verified absent: not counted
    assert focal([True, True]) > 1.0  # class 1 verified absent: a confident false positive costs
    # A matched object counts even when its class is marked not exhaustively annotated.
    missed = logits_for([None, 1], num_classes=2)
    loss = set_loss(missed[None], boxes[None], [labels], [targets], torch.tensor([[False, False]]),
                    [torch.zeros(0, 4)], WEIGHTS, num_boxes=1)
    assert loss["focal"] > 1.0


def test_a_prediction_on_a_crowd_region_is_neither_object_nor_background():
    targets, labels = torch.tensor([[0.2, 0.2, 0.2, 0.2]]), torch.tensor([0])
    boxes = torch.tensor([[0.2, 0.2, 0.2, 0.2], [0.75, 0.75, 0.1, 0.1]])
    logits = logits_for([0, 0], num_classes=1)  # the second fires on the crowd
    crowd = torch.tensor([[0.75, 0.75, 0.4, 0.4]])
    def focal(crowd_regions) -> float:
        return float(set_loss(logits[None], boxes[None], [labels], [targets], torch.ones(1, 1, dtype=torch.bool),
                              [crowd_regions], WEIGHTS, num_boxes=1)["focal"])
    assert focal(crowd) < 1e-3
    assert focal(torch.zeros(0, 4)) > 1.0


def test_an_untrained_head_predicts_each_tokens_grid_cell_at_the_prior():
    head = DetectionHead(vision_width=16)
    tokens = torch.randn(2, 6, 16)  # a 2 x 3 grid
    queries = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    detections = head(tokens, (2, 3), torch.nn.Linear(16, 8), queries)
    expected = torch.tensor([[1 / 6, 0.25, 1 / 3, 0.5], [0.5, 0.25, 1 / 3, 0.5], [5 / 6, 0.25, 1 / 3, 0.5],
                             [1 / 6, 0.75, 1 / 3, 0.5], [0.5, 0.75, 1 / 3, 0.5], [5 / 6, 0.75, 1 / 3, 0.5]])
    torch.testing.assert_close(detections.boxes, expected.expand(2, -1, -1))
    torch.testing.assert_close(torch.sigmoid(grid_box_bias(2, 3)), expected)
    assert detections.logits.shape == (2, 6, 5)
    # cos in [-1, 1] times the initial scale of 10, around the prior's logit
    assert (detections.logits - PRIOR_LOGIT).abs().max() <= 10.5


def test_the_loss_trains_boxes_and_classes():
    torch.manual_seed(0)
    head = DetectionHead(vision_width=16)
    projection = torch.nn.Linear(16, 8)
    tokens, queries = torch.randn(1, 4, 16), torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    targets, labels = [torch.tensor([[0.3, 0.2, 0.3, 0.3]])], [torch.tensor([1])]
    optimizer = torch.optim.Adam([*head.parameters(), *projection.parameters()], lr=1e-2)
    first = None
    for _ in range(100):
        detections = head(tokens, (2, 2), projection, queries)
        loss = set_loss(detections.logits, detections.boxes, labels, targets, torch.ones(1, 3, dtype=torch.bool),
                        [torch.zeros(0, 4)], WEIGHTS, num_boxes=1)
        optimizer.zero_grad()
        loss["total"].backward()
        optimizer.step()
        first = first if first is not None else loss["total"].item()
    assert loss["total"].item() < first / 5
    best = detections.logits[0, :, 1].argmax()
    torch.testing.assert_close(detections.boxes[0, best], targets[0][0], atol=0.03, rtol=0)


def test_a_position_embedding_of_a_smaller_image_is_resampled_to_the_grid():
    small = Mammut(MammutConfig(image_size=32, patch_size=8, vision_width=32, vision_depth=1, vision_heads=2,
                                text_width=32, text_depth=1, text_heads=2, cross_attention_layers=[0], embed_dim=16,
                                vocab_size=64))
    large = Mammut(MammutConfig(image_size=48, patch_size=8, vision_width=32, vision_depth=1, vision_heads=2,
                                text_width=32, text_depth=1, text_heads=2, cross_attention_layers=[0], embed_dim=16,
                                vocab_size=64))
    old = small.vision.vit.pos_embed.detach()
    resampled = large.vision.resample_position_embedding(old)
    assert resampled.shape == large.vision.vit.pos_embed.shape == (1, 1 + 36, 32)
    torch.testing.assert_close(resampled[:, 0], old[:, 0])  # the class token's entry is kept
    # A constant grid stays constant; corners stay near the corners' values.
    assert resampled[:, 1:].std() > 0
