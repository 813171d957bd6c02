"""The progress bar: steps decide a run's length (max_epochs=-1), so no "Epoch 0/-2"."""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar


class StepProgressBar(RichProgressBar):
    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        return f"Training (max {trainer.max_steps} steps)" if trainer.max_steps and trainer.max_steps > 0 else "Training"
