"""The contract every model family fulfils (see docs/ARCHITECTURE.md).

A family is a ``torch.nn.Module`` subclass of :class:`CellModel` with a config
dataclass.  The engine (``cellzoo.infer``), the trainer (``cellzoo.train``) and
the zoo only talk to models through the members below.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..types import Instances


class CellModel(nn.Module):
    #: family name as used in the registry and ``--family`` ("repsnet", "fullnet", "cascade", "scts")
    family: ClassVar[str] = ""
    #: "dense": outputs per-pixel maps that the engine stitches (overlap blending) and then
    #: post-processes once over the stitched map; "detection": outputs instances per tile that
    #: the engine stitches with cross-tile de-duplication.
    kind: ClassVar[str] = "dense"
    #: the config dataclass type of the family
    Config: ClassVar[type]

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config

    # ------------------------------------------------------------------ geometry
    @property
    def halo(self) -> int:
        """Margin (px) of context each tile needs on every side; from the receptive field."""
        return 32

    @property
    def size_divisor(self) -> int:
        """Tile height and width must be multiples of this."""
        return 1

    @property
    def min_tile(self) -> int:
        return 64

    @property
    def output_stride(self) -> int:
        """Dense families: 1, or s > 1 when ``forward(batch, full_resolution=False)`` returns the raw maps at
        1/s of the input size; the engine then upsamples (bilinear, align_corners=False) only the part of
        each tile it keeps, which gives the same values as upsampling the whole tile."""
        return 1

    @property
    def class_names(self) -> list[str]:
        """``class_names[0]`` is background; ``["background", "nucleus"]`` for class-agnostic models."""
        return list(getattr(self.config, "class_names", None) or ["background", "nucleus"])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    # ------------------------------------------------------------------ inference
    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """H×W×3 float32 image scaled 0–255 (the engine's canonical form) → C×H×W tensor
        in the family's own input scaling."""
        raise NotImplementedError

    def forward(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    #: dense families: for each output map name, how the engine turns raw outputs into the
    #: maps it blends: "softmax" (channel softmax), "sigmoid", "identity".
    dense_maps: ClassVar[dict[str, str]] = {}

    def postprocess(self, maps: dict[str, np.ndarray], **params: Any) -> Instances:
        """Dense: ``maps`` are the stitched, activated maps (C×H×W numpy) of one image.
        Detection: ``maps`` are the raw outputs of one tile (numpy), see the family."""
        raise NotImplementedError

    def default_postprocess_params(self) -> dict[str, Any]:
        """Thresholds etc. with their defaults; the Segment widget shows these as advanced fields."""
        return {}

    # ------------------------------------------------------------------ training
    def targets(self, labels: np.ndarray, classes: np.ndarray | None) -> dict[str, np.ndarray]:
        """Training targets for one H×W instance map (+ class map), as numpy arrays."""
        raise NotImplementedError

    def loss(self, outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Loss terms; must contain ``"total"`` (the one that is back-propagated)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ config helpers
    def config_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)

    @classmethod
    def from_config(cls, config: dict[str, Any] | Any) -> "CellModel":
        if isinstance(config, dict):
            names = {f.name for f in dataclasses.fields(cls.Config)}
            config = cls.Config(**{k: v for k, v in config.items() if k in names})
        return cls(config)
