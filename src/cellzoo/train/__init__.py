"""Training: the ``train_iter`` generator (events, validation, best checkpoint, resume, cancel)."""
from .trainer import TrainConfig, TrainResult, split_samples, train, train_iter, validation_metrics

__all__ = ["TrainConfig", "TrainResult", "train_iter", "train", "split_samples", "validation_metrics"]
