"""Qt-free label editing used by the Correct widget, and the training-set folder writer/reader."""
from .index import InstanceIndex, prepare_instances
from .ops import (Patch, assign_class, class_of_instances, delete_instance, fill_holes, merge_instances,
                  next_free_id, plan_assign_class, plan_classes_after_paint, plan_delete, plan_merge,
                  plan_remove_small, plan_split, relabel_sequential, remove_small, split_instance, sync_classes)
from .table import COLUMNS, instance_table
from .training_set import TrainingSetWriter, read_training_set

__all__ = [
    "COLUMNS", "InstanceIndex", "Patch", "TrainingSetWriter", "assign_class", "class_of_instances", "delete_instance", "fill_holes",
    "instance_table", "merge_instances", "next_free_id", "plan_assign_class",
    "plan_classes_after_paint", "plan_delete", "plan_merge", "plan_remove_small", "plan_split", "prepare_instances",
    "read_training_set", "relabel_sequential",
    "remove_small", "split_instance", "sync_classes",
]
