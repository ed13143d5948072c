"""VQA fine-tuning with generated answers (MaMMUT, arXiv 2303.16839, Sec. 3.4 and 4.3).

    mammut fit --config configs/finetune_vqa.yaml --model.init_from=runs/pretrain/.../last.ckpt
    mammut fit --config configs/finetune_vqa_peft.yaml --model.init_from=...   # eP-ALM-style PEFT

``task.py``: ``VQATask`` and what it needs from its data (``QuestionInputs``); ``data.py``:
``VQADataModule`` (VQAv2 files) and ``QuestionData``, what every question-answering data module
shares (the video QA one too); ``preset.py``: ``VQAModule``, a ``MammutModule`` with that one task.
"""

from mammut.tasks.vqa.data import GROUPINGS, QuestionData, VQADataModule
from mammut.tasks.vqa.preset import VQAModule
from mammut.tasks.vqa.task import QuestionInputs, VQATask, answer_loss

__all__ = ["GROUPINGS", "QuestionData", "QuestionInputs", "VQADataModule", "VQAModule", "VQATask", "answer_loss"]
