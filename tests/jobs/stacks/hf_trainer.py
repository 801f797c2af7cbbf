"""A Hugging Face `Trainer` run as people write it: a tiny GPT-2 built from its config (no
download), DDP on gloo under torchrun, the Trainer's own loop."""

from __future__ import annotations

import os
import sys
import tempfile

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

sys.path.insert(0, os.path.dirname(__file__))
from _common import report_truth  # noqa: E402

STEPS = int(os.environ.get("STACK_STEPS", "12"))


class Tokens(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4096

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(i)
        ids = torch.randint(0, 128, (32,), generator=g)
        return {"input_ids": ids, "labels": ids.clone()}


def main() -> None:
    config = GPT2Config(vocab_size=128, n_positions=32, n_embd=64, n_layer=2, n_head=2)
    model = GPT2LMHeadModel(config)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            max_steps=STEPS,
            per_device_train_batch_size=4,
            use_cpu=True,
            ddp_backend="gloo",
            report_to=[],
            save_strategy="no",
            logging_steps=1000,
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        trainer = Trainer(model=model, args=args, train_dataset=Tokens())
        trainer.train()
        report_truth(optimizer_steps=trainer.state.global_step)


if __name__ == "__main__":
    main()
