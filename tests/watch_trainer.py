"""A real Hugging Face Trainer run for the watch end-to-end test: `python watch_trainer.py OUT`.

It saves checkpoint-0 (the start), then checkpoint-3, -6, -9, -12, pausing at each step so
that `opdlens watch` in another process sees the checkpoints land one by one.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from checkpoints import tiny_model
from transformers import Trainer, TrainerCallback, TrainingArguments

from opdlens.integrations.transformers import save_base

VOCAB = 32


class Pause(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        time.sleep(0.2)


def main(out: Path) -> None:
    data = torch.randint(4, VOCAB, (32, 8), generator=torch.Generator().manual_seed(0))
    args = TrainingArguments(
        output_dir=str(out), max_steps=12, per_device_train_batch_size=4, learning_rate=3e-2,
        save_strategy="steps", save_steps=3, logging_steps=100, use_cpu=True, report_to=[],
        disable_tqdm=True, seed=0,
    )  # fmt: skip
    model = tiny_model("llama", seed=0, vocab_size=VOCAB).train()
    save_base(model, out)
    rows = [{"input_ids": x, "labels": x} for x in data]
    Trainer(model=model, args=args, train_dataset=rows, callbacks=[Pause()]).train()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
