# mammut: `make help` lists the targets. Each target sets up what it needs on a fresh machine.
PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
DEMO    ?= data/demo
CONFIG  ?= configs/pretrain.yaml
ARGS    ?=
STAMP   := $(VENV)/.installed
# The benchmark's peers (open_clip, and the transformers it needs) pin versions that disagree with
# peft's; they get an environment of their own, so that `make bench` never changes $(VENV).
BENCH_VENV  ?= .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed
# Fine-tuning starts from the newest pretrain checkpoint unless CKPT=path/to.ckpt is given.
CKPT    ?= $(shell ls -t runs/pretrain/*/checkpoints/*.ckpt 2>/dev/null | head -n 1)

.DEFAULT_GOAL := help
.PHONY: help install data pretrain pretrain-shards pretrain-shards-mixture data-sources pretrain-mixture finetune-vqa finetune-vqa-peft finetune-vqa-lora finetune-vqa-peft-lora finetune-video finetune-detection finetune-detection-selftrain multitask results tensorboard test test-fast bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install mammut with its dev extras

# A demo world written before it had video clips is written again (the same images, byte for byte).
$(DEMO)/video/train_qa.json: | $(STAMP)
	$(BIN)/python -m mammut.data.demo --out $(DEMO)

# The tokenizer learns the training captions alone: question and answer words are written in pieces
# of caption words, which VQA answers better from a pretrained checkpoint than words of their own that
# pretraining never met (docs/vqa.md, "The figure from today's defaults"). A tokenizer trained with other
# arguments (an older demo world's) is trained again: the stamp holds the arguments it was trained with.
TOKENIZER_ARGS := --captions $(DEMO)/annotations/captions_train.json
$(DEMO)/tokenizer.json: $(DEMO)/.tokenizer-arguments | $(DEMO)/video/train_qa.json
	$(BIN)/python -m mammut.data.tokenizer --out $(DEMO)/tokenizer.json $(TOKENIZER_ARGS)

$(DEMO)/.tokenizer-arguments: FORCE | $(DEMO)/video/train_qa.json
	@echo '$(TOKENIZER_ARGS)' | cmp -s - $@ || echo '$(TOKENIZER_ARGS)' > $@

FORCE:

# A demo world written before it had the zero-shot classification split gets that split alone
# (its other files stay as they were, byte for byte).
$(DEMO)/classification/info.json: | $(DEMO)/video/train_qa.json
	$(BIN)/python -m mammut.data.demo.classification --out $(DEMO)

data: $(DEMO)/tokenizer.json $(DEMO)/classification/info.json  ## write the demo world (images, captions, VQA, detection, video clips, classification) and train its tokenizer

pretrain: data  ## pretrain MaMMUT on the demo world (configs/pretrain.yaml; ARGS="--trainer.max_steps=100 --trainer.val_check_interval=50")
	$(BIN)/mammut fit --config $(CONFIG) $(ARGS)

# The demo's training split as img2dataset-layout tar shards (with parquet and stats files);
# the stamp is written last, so an interrupted write is done again.
$(DEMO)/shards/train/.written: | $(DEMO)/tokenizer.json
	$(BIN)/python -m mammut.data.write_shards --captions $(DEMO)/annotations/captions_train.json \
		--images $(DEMO)/images/train --out $(DEMO)/shards/train --samples-per-shard 1000
	touch $@

# Pretraining sources with web data's flaws beside the clean captions (noisy alt-text, near-duplicates),
# also as tar shards (numbered apart from the training split's, so that keys stay unique), and the
# held-out target set of rule target_gain; the marker is written once all of them are.
$(DEMO)/sources/.written: | $(DEMO)/video/train_qa.json
	$(BIN)/python -m mammut.data.demo.web_sources --out $(DEMO)
	$(BIN)/python -m mammut.data.write_shards --captions $(DEMO)/sources/noisy/captions.json \
		--images $(DEMO)/sources/noisy/images --out $(DEMO)/shards/noisy --samples-per-shard 1000 --first-shard 100
	$(BIN)/python -m mammut.data.write_shards --captions $(DEMO)/sources/redundant/captions.json \
		--images $(DEMO)/sources/redundant/images --out $(DEMO)/shards/redundant --samples-per-shard 1000 --first-shard 200
	touch $@

data-sources: $(DEMO)/sources/.written  ## write the demo's noisy and redundant pretraining sources and a held-out target set (mammut.data.demo.web_sources)

pretrain-mixture: data data-sources  ## pretrain on clean, noisy and redundant sources (configs/pretrain_mixture.yaml; ARGS="--data.mixing=adaptive")
	$(BIN)/mammut fit --config $(CONFIG) --config configs/pretrain_mixture.yaml $(ARGS)

pretrain-shards: data $(DEMO)/shards/train/.written  ## pretrain as `make pretrain`, the training data read from tar shards (configs/pretrain_shards.yaml)
	$(BIN)/mammut fit --config configs/pretrain_shards.yaml $(ARGS)

pretrain-shards-mixture: data data-sources $(DEMO)/shards/train/.written  ## the flawed sources' mixture read from shards (configs/pretrain_shards_mixture.yaml; ARGS="--data.mixing=adaptive")
	$(BIN)/mammut fit --config configs/pretrain_shards.yaml --config configs/pretrain_shards_mixture.yaml $(ARGS)

finetune-vqa: data  ## fine-tune the pretrained model for VQA (CKPT=... to choose the checkpoint)
	@test -n "$(CKPT)" || { echo "no checkpoint in runs/pretrain: run 'make pretrain' first, or pass CKPT=path/to.ckpt"; exit 1; }
	$(BIN)/mammut fit --config configs/finetune_vqa.yaml --model.init_from=$(CKPT) $(ARGS)

finetune-vqa-peft: data  ## VQA with eP-ALM-style PEFT: frozen model, trained prefix (<1% of the weights)
	@test -n "$(CKPT)" || { echo "no checkpoint in runs/pretrain: run 'make pretrain' first, or pass CKPT=path/to.ckpt"; exit 1; }
	$(BIN)/mammut fit --config configs/finetune_vqa.yaml --config configs/finetune_vqa_peft.yaml --model.init_from=$(CKPT) $(ARGS)

finetune-vqa-lora: data  ## VQA with LoRA adapters on a frozen model (<1% of the weights)
	@test -n "$(CKPT)" || { echo "no checkpoint in runs/pretrain: run 'make pretrain' first, or pass CKPT=path/to.ckpt"; exit 1; }
	$(BIN)/mammut fit --config configs/finetune_vqa.yaml --config configs/finetune_vqa_lora.yaml --model.init_from=$(CKPT) $(ARGS)

finetune-vqa-peft-lora: data  ## VQA with the eP-ALM prefix and LoRA adapters together
	@test -n "$(CKPT)" || { echo "no checkpoint in runs/pretrain: run 'make pretrain' first, or pass CKPT=path/to.ckpt"; exit 1; }
	$(BIN)/mammut fit --config configs/finetune_vqa.yaml --config configs/finetune_vqa_peft.yaml \
		--config configs/finetune_vqa_lora.yaml --trainer.logger.init_args.name=finetune_vqa_peft_lora \
		--model.init_from=$(CKPT) $(ARGS)

finetune-video: data  ## video captioning, then video QA, each from the pretrain checkpoint (CKPT=...)
	@test -n "$(CKPT)" || { echo "no checkpoint in runs/pretrain: run 'make pretrain' first, or pass CKPT=path/to.ckpt"; exit 1; }
	$(BIN)/mammut fit --config configs/finetune_video_caption.yaml --model.init_from=$(CKPT) $(ARGS)
	$(BIN)/mammut fit --config configs/finetune_video_qa.yaml --model.init_from=$(CKPT) $(ARGS)

finetune-detection: data  ## open-vocabulary detection from the pretrain checkpoint (CKPT=...); novel classes never boxed
	@test -n "$(CKPT)" || { echo "no checkpoint in runs/pretrain: run 'make pretrain' first, or pass CKPT=path/to.ckpt"; exit 1; }
	$(BIN)/mammut fit --config configs/finetune_detection.yaml --model.init_from=$(CKPT) $(ARGS)

# Self-training (OWL-ST): DETECTOR (default: the newest detection run) pseudo-labels the captioned
# training images, a detector trains on them from CKPT (the pretrain checkpoint), then on the human
# boxes; ROUNDS rounds, each one's result the next one's teacher (docs/detection.md).
DETECTOR ?= $(shell ls -t runs/finetune_detection/*/checkpoints/last.ckpt 2>/dev/null | head -n 1)
ROUNDS   ?= 1
finetune-detection-selftrain: data  ## detection self-trained on pseudo-boxes from captions (CKPT=pretrain, DETECTOR=teacher, ROUNDS=1)
	@test -n "$(CKPT)" || { echo "no checkpoint in runs/pretrain: run 'make pretrain' first, or pass CKPT=path/to.ckpt"; exit 1; }
	@test -n "$(DETECTOR)" || { echo "no detector in runs/finetune_detection: run 'make finetune-detection' first, or pass DETECTOR=path/to.ckpt"; exit 1; }
	$(BIN)/python -m mammut.tasks.detection.self_training --pretrain $(CKPT) --detector $(DETECTOR) --rounds $(ROUNDS) \
		--check-captions annotations/captions_val.json --check-images images/val \
		--check-truth $(DEMO)/annotations/instances_val.json $(ARGS)

multitask: data  ## pretraining and VQA trained jointly, from scratch, in one run (configs/multitask.yaml)
	$(BIN)/mammut fit --config configs/multitask.yaml $(ARGS)

# Hours on 2 CPU cores (docs/results.md says how many): run it where it can take them. It can be
# stopped at any point; run again, it skips the finished stages (their records in docs/results/)
# and resumes the stopped one. ARGS="--redo pretrain" runs pretraining and the stages from it again;
# ARGS="--study cause" (or fusion, detection) runs a study that changes one thing at a time.
results: data  ## run every recipe and baseline as a user would and write docs/results.md (ARGS="--stages pretrain vqa")
	$(BIN)/python -m mammut.results $(ARGS)

tensorboard: install  ## serve the training logs in runs/ on http://localhost:6006
	$(BIN)/tensorboard --logdir runs --port 6006

# Three pytest-xdist workers on two cores: many tests spend much of their time waiting on processes
# they start (imports, gloo ranks), which a third worker fills (11.2 minutes against 13.5 for a fresh
# clone's `make test` with two). Tests that share a module-scoped run stay on one worker, the
# longest start first (tests/conftest.py).
PYTEST_PARALLEL ?= -n 3 --dist loadgroup --no-loadscope-reorder

test: install  ## run the whole test suite, slow end-to-end tests included
	$(BIN)/python -m pytest -q $(PYTEST_PARALLEL)

test-fast: install  ## run the tests not marked slow
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_PARALLEL)

$(BENCH_STAMP): pyproject.toml
	test -d $(BENCH_VENV) || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet -e ".[bench]"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)  ## benchmarks against open_clip CoCa, in their own .venv-bench; tables are appended to bench/RESULTS.md
	$(BENCH_VENV)/bin/python bench/train_throughput.py
	$(BENCH_VENV)/bin/python bench/generate.py

clean:  ## remove the virtual environments, demo data and runs
	rm -rf $(VENV) $(BENCH_VENV) data runs
