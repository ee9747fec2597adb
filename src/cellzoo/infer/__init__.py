"""Tiled inference: device choice, input normalisation, tiling with halo and blending, TTA,
and the ``segment`` generator shared by napari, the CLI and the trainer."""
from .device import amp_dtype, cpu_supports_bf16, select_device
from .engine import (auto_tile_size, merge_params, predict_maps, resolve_model, segment, segment_iter,
                     segment_stack_iter)
from .prepare import percentile_normalize, prepare_image
from .tiling import plan_tiles
from .tta import DIHEDRAL_OPS, DihedralOp, permute_directions

__all__ = ["select_device", "amp_dtype", "cpu_supports_bf16", "prepare_image", "percentile_normalize",
           "segment_iter", "segment", "segment_stack_iter", "resolve_model", "merge_params", "predict_maps",
           "auto_tile_size", "plan_tiles", "DihedralOp", "DIHEDRAL_OPS", "permute_directions"]
