"""Qt-free label editing used by the Correct widget, and the training-set folder writer/reader."""
from .ops import (assign_class, class_of_instances, delete_instance, fill_holes, merge_instances,
                  next_free_id, relabel_sequential, remove_small, split_instance, sync_classes)
from .table import COLUMNS, instance_table
from .training_set import TrainingSetWriter, read_training_set

__all__ = [
    "COLUMNS", "TrainingSetWriter", "assign_class", "class_of_instances", "delete_instance", "fill_holes",
    "instance_table", "merge_instances", "next_free_id", "read_training_set", "relabel_sequential",
    "remove_small", "split_instance", "sync_classes",
]
