"""Training: the ``train_iter`` generator (events, validation, best checkpoint, resume, cancel)."""
from .finetune import (FinetuneData, FinetuneRecipe, FinetuneResult, finetune, finetune_iter,
                       prepare_finetune_data)
from .trainer import TrainConfig, TrainResult, split_samples, train, train_iter, validation_metrics

__all__ = ["FinetuneRecipe", "FinetuneData", "FinetuneResult", "prepare_finetune_data", "finetune_iter", "finetune",
           "TrainConfig", "TrainResult", "train_iter", "train", "split_samples", "validation_metrics"]
