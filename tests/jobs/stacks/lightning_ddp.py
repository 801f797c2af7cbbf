"""A PyTorch Lightning run as people write it: a LightningModule, `Trainer(strategy="ddp")`
on CPU/gloo, started by torchrun (Lightning sees torchrun's environment and does not
spawn its own processes)."""

from __future__ import annotations

import os
import sys

import lightning as L
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(__file__))
from _common import report_truth  # noqa: E402

STEPS = int(os.environ.get("STACK_STEPS", "12"))


class Model(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 1))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _i: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def main() -> None:
    data = torch.utils.data.TensorDataset(torch.randn(2048, 32), torch.randn(2048, 1))
    loader = torch.utils.data.DataLoader(data, batch_size=16)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
        strategy="ddp",
        max_steps=STEPS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Model(), loader)
    report_truth(optimizer_steps=trainer.global_step)


if __name__ == "__main__":
    main()
