"""Shared fixtures: a tiny demo world with its tokenizer, written once per test session."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from mammut.data.demo import generate
from mammut.data.tokenizer import main as train_tokenizer
from mammut.model.compiled_decoding import compiled_decoding
from mammut.model.text_decoder import TextDecoder

# Tests run on the CPU, with few threads so that parallel processes do not thrash: at most 2, and
# under pytest-xdist (`make test`) the cores shared out among the workers, at least 1 each.
# Processes the tests start (ranks, CLI runs) are told the same through OMP_NUM_THREADS.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, min(2, (os.cpu_count() or 1) // _WORKERS))
torch.set_num_threads(THREADS)
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))

REPO = Path(__file__).resolve().parents[1]

# `make test` runs pytest-xdist workers with --dist loadgroup: each test goes to whichever worker
# is free, except the tests of one file that share a module-scoped fixture (a training run, two
# spawned ranks), which go to one worker so that it is made once, and the files below.
ONE_WORKER_FILES = {
    "test_compiled_decoding",  # the kernels one test compiles (kept in the process) serve the next
}
# The longest of those start first (with --no-loadscope-reorder, work is handed out in this order),
# so that the other worker takes the many short tests meanwhile.
LONGEST_FIRST = ("test_compiled_decoding", "test_distributed_loss")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        module = getattr(getattr(item, "module", None), "__name__", None)
        fixtures = getattr(item, "_fixtureinfo", None)
        shared = fixtures is not None and any(definitions[-1].scope in ("module", "class", "package")
                                              for definitions in fixtures.name2fixturedefs.values())
        if module is not None and (shared or module in ONE_WORKER_FILES):
            item.add_marker(pytest.mark.xdist_group(module))
    if os.environ.get("PYTEST_XDIST_WORKER"):  # the same order on every worker; a stable sort
        items.sort(key=lambda item: next((n for n, name in enumerate(LONGEST_FIRST)
                                          if getattr(getattr(item, "module", None), "__name__", None) == name),
                                         len(LONGEST_FIRST)))


def pytest_collection_finish(session):
    """Under ``--dist loadgroup`` xdist marks a grouped test by its node id (``...@group``); where
    it cannot (pytest-xdist issue #1386), tests are spread as if ungrouped and every shared run is
    made on each worker. Stop at once rather than run twice as long."""
    if not (os.environ.get("PYTEST_XDIST_WORKER") and session.config.getvalue("loadgroup")):
        return
    ungrouped = [item.nodeid for item in session.items
                 if item.get_closest_marker("xdist_group") and "@" not in item.nodeid]
    if ungrouped:
        raise pytest.UsageError(f"pytest-xdist did not group {ungrouped[0]} (and {len(ungrouped) - 1} more) under "
                                f"--dist loadgroup, with pytest {pytest.__version__}: install pytest<9.2 "
                                "(pytest-xdist issue #1386), as pyproject.toml's dev extra asks")


# torch.compile's CPU backend (inductor) builds C++ kernels.
needs_compiler = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("clang++") is None,
                                    reason="inductor needs a C++ compiler on the CPU")


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    """data/demo in miniature: a few dozen images per split, and a tokenizer trained on them."""
    root = tmp_path_factory.mktemp("demo")
    generate(root, seed=0, tiny=True)
    # As `make data` trains it: on every training text, so that answers are whole tokens.
    train_tokenizer(["--out", str(root / "tokenizer.json"),
                     "--captions", str(root / "annotations/captions_train.json"),
                     "--vqa", str(root / "vqa/v2_OpenEnded_mscoco_train_questions.json"),
                     "--vqa", str(root / "vqa/v2_mscoco_train_annotations.json"),
                     "--msrvtt", str(root / "video/train_videodatainfo.json"),
                     "--video-qa", str(root / "video/train_qa.json"),
                     "--instances", str(root / "annotations/instances_train.json")])
    return root


@pytest.fixture
def without_autotuning(monkeypatch):
    """Plain inductor for the tests of what the graphs decode. Autotuning only picks the fastest of
    equivalent GEMM kernels, and timing them all for every graph costs most of these tests' time;
    tests/test_compiled_decoding.py keeps it in its bf16 test, as users run it."""
    plain = torch.compile(TextDecoder.continue_decoding, dynamic=False, fullgraph=True)
    monkeypatch.setattr(compiled_decoding, "step", plain)
    torch._dynamo.reset_code(TextDecoder.continue_decoding.__code__)
    yield
    torch._dynamo.reset_code(TextDecoder.continue_decoding.__code__)
    compiled_decoding.built_from = None
