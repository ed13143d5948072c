"""What a measurement ran on: the processor, its cores, whether it has native bf16, and torch."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 matmuls natively on this CPU (AVX-512 BF16 or AMX). Without them
    torch falls back to a reference kernel that is orders of magnitude slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def describe_machine() -> str:
    """One line, e.g. "AMD EPYC (native bf16), 2 cores, torch 2.14.1"."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    bf16 = "native bf16" if cpu_has_native_bf16() else "no native bf16"
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu_model()} ({bf16}), {cores} cores{gpu}, torch {torch.__version__}"
