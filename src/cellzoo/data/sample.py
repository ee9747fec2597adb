"""One annotated image: the unit that datasets yield and the trainer / evaluator consume."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Sample:
    """``image``: H×W or H×W×C array in its native dtype; ``labels``: H×W int32 instance ids
    (0 = background); ``classes``: H×W uint8 class ids (0 = background) or ``None``."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    classes: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.labels.shape != self.image.shape[:2]:
            raise ValueError(f"sample {self.name!r}: label map shape {self.labels.shape} does not match "
                             f"image shape {self.image.shape[:2]}")
        if self.classes is not None and self.classes.shape != self.labels.shape:
            raise ValueError(f"sample {self.name!r}: class map shape {self.classes.shape} does not match "
                             f"label map shape {self.labels.shape}")


#: A training transform: (image H×W×3 float32 0–255, labels int32, classes uint8|None, rng) ->
#: the same triple, transformed consistently. Every family's trainer accepts a list of these.
# Transform = Callable[[np.ndarray, np.ndarray, np.ndarray | None, np.random.Generator],
#                      tuple[np.ndarray, np.ndarray, np.ndarray | None]]
