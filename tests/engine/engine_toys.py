"""Tiny models and datasets for the engine tests, and a script entry point used to train in a
subprocess (``python engine_toys.py WORK_DIR ...``) for the kill-and-resume test."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset


class ToyDataset(Dataset):
    """``n`` fixed random images [3, size, size] with a scalar regression target.

    With ``augment`` each item adds noise from the global torch RNG (like a random flip would),
    so exact resumption needs the RNG state restored."""

    def __init__(self, n: int = 24, size: int = 8, augment: bool = True) -> None:
        g = torch.Generator().manual_seed(1234)
        self.images = torch.rand(n, 3, size, size, generator=g)
        self.values = torch.rand(n, generator=g)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        image = self.images[i]
        if self.augment:
            image = image + 0.05 * torch.rand_like(image)
        return image, {"value": self.values[i], "index": torch.tensor(i)}


def toy_collate(batch):
    images, targets = zip(*batch)
    return list(images), list(targets)


class ToyNet(nn.Module):
    """conv -> ReLU -> dropout -> pool -> linear; loss = per-image mean squared error.

    Args:
        dropout: dropout probability (random, so resume must restore the torch RNG).
        nan_at: return a NaN loss on this (1-based) training call.
        sleep: seconds to sleep per call (keeps a subprocess run alive long enough to kill).
    """

    def __init__(self, dropout: float = 0.2, nan_at: int | None = None, sleep: float = 0.0):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(4, 1)
        self.nan_at = nan_at
        self.sleep = sleep
        self.calls = 0
        self.seen: list[list[int]] = []

    def forward(self, images: list[Tensor], targets: list[dict] | None = None):
        x = torch.stack(images)
        x = self.drop(torch.relu(self.conv(x))).mean(dim=(2, 3))
        pred = self.fc(x).squeeze(1)
        if not self.training:
            return pred
        self.calls += 1
        self.seen.append([int(t["index"]) for t in targets])
        if self.sleep:
            time.sleep(self.sleep)
        target = torch.stack([t["value"] for t in targets])
        loss = ((pred - target) ** 2).mean()
        if self.nan_at is not None and self.calls == self.nan_at:
            loss = loss * float("nan")
        return {"loss_mse": loss, "loss_l1": 0.1 * (pred - target).abs().mean(),
                "stats_pred_mean": pred.detach().mean()}


def main(argv: list[str] | None = None) -> int:
    from glimpse.engine.train import fit

    p = argparse.ArgumentParser()
    p.add_argument("work_dir", type=Path)
    p.add_argument("--max-iters", type=int, default=30)
    p.add_argument("--checkpoint-every", type=int, default=5)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--deterministic", action="store_true", help="no dropout, no augmentation")
    p.add_argument("--resume", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = toy_config(
        max_iters=args.max_iters, checkpoint_every=args.checkpoint_every, batch_size=args.batch_size
    )
    model = ToyNet(dropout=0.0 if args.deterministic else 0.2, sleep=args.sleep)
    dataset = ToyDataset(augment=not args.deterministic)
    fit(model, dataset, cfg, args.work_dir, resume=args.resume, collate_fn=toy_collate)
    return 0


def toy_config(**overrides):
    from glimpse.engine.train import TrainConfig

    base = dict(max_iters=30, batch_size=4, warmup_iters=5, lr=0.05, checkpoint_every=5)
    base.update(overrides)
    return TrainConfig(**base)


if __name__ == "__main__":
    sys.exit(main())
