"""scripts/plot_scalars.py draws the tags a pattern names, one labelled line each, as valid SVG."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET

import pytest
from torch.utils.tensorboard import SummaryWriter

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
from plot_scalars import main  # noqa: E402

SVG = "{http://www.w3.org/2000/svg}"


def test_each_matching_tag_is_one_line_labelled_by_its_wildcard(tmp_path):
    with SummaryWriter(tmp_path / "run") as writer:
        for step in range(0, 50, 10):
            writer.add_scalar("train/sources/clean/weight", 0.3 + step / 100, step)
            writer.add_scalar("train/sources/noisy/weight", 0.7 - step / 100, step)
            writer.add_scalar("train/loss", 5.0, step)
    out = tmp_path / "weights.svg"
    main([str(tmp_path / "run"), "--tags", "train/sources/*/weight", "--out", str(out)])
    svg = ET.parse(out).getroot()
    lines = svg.findall(f"{SVG}polyline")
    assert len(lines) == 2 and all(len(line.get("points").split()) == 5 for line in lines)
    labels = [text.text for text in svg.findall(f"{SVG}text")]
    assert "clean" in labels and "noisy" in labels and "train/loss" not in labels
    # The noisy line falls where the clean one rises: its last point is lower on the page (larger y).
    clean, noisy = ([float(p.split(",")[1]) for p in line.get("points").split()] for line in lines)
    assert clean[-1] < clean[0] and noisy[-1] > noisy[0]
    with pytest.raises(SystemExit, match="no tag matches"):
        main([str(tmp_path / "run"), "--tags", "val/*", "--out", str(out)])
