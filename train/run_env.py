"""The process side of a training run: which device and process group (`setup_distributed`,
`Dist`) and where its lines and metrics go (`RunLog`). Kept apart from the trainer's steps."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass

import torch
from torch import distributed as dist

from .config import ConfigError


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def active(self) -> bool:
        return self.world > 1

    def all_sum(self, values: list[float]) -> list[float]:
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()


def setup_distributed(device: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device = cuda but no CUDA GPU is visible; use train.device=cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
    dev = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(int(os.environ.get("RANK", "0")), world, local_rank, dev)


class RunLog:
    """Log lines (stderr + RUN/train.log) and metrics rows (RUN/metrics.jsonl), rank 0 only."""

    def __init__(self, out: str, d: Dist, quiet: bool = False):
        self.out, self.d, self.quiet = out, d, quiet

    def info(self, msg: str) -> None:
        if self.d.rank != 0:
            return
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        if not self.quiet:
            print(line, file=sys.stderr, flush=True)
        with open(os.path.join(self.out, "train.log"), "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def warn(self, msg: str) -> None:
        """Any rank: a skipped video is only seen by the process that read it."""
        prefix = f"[rank {self.d.rank}] " if self.d.active else ""
        print(f"warning: {prefix}{msg}", file=sys.stderr, flush=True)
        if self.d.rank == 0:
            with open(os.path.join(self.out, "train.log"), "a", encoding="utf-8") as f:
                f.write(f"{time.strftime('%H:%M:%S')} warning: {msg}\n")

    def metrics(self, row: dict) -> None:
        if self.d.rank == 0:
            with open(os.path.join(self.out, "metrics.jsonl"), "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
