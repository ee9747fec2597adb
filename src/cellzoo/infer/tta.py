"""Test-time augmentation over the 8 symmetries of the square (the dihedral group D4).

An op ``(flip, k)`` transforms an N×C×H×W batch by mirroring left-right (if ``flip``) and then
rotating by ``k`` quarter turns counter-clockwise (``torch.rot90`` on the last two axes).
Maps predicted on the transformed batch are mapped back with :meth:`DihedralOp.invert`.
Most maps are then directly comparable; direction-dependent channels (e.g. RepSNet's
left/right/up/down boundary distances) must also be permuted, which a model does in its
``tta_transform_maps(maps, op)`` hook, e.g. with :func:`permute_directions`.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

_DIRECTION_VECTORS = {"L": (0, -1), "R": (0, 1), "U": (-1, 0), "D": (1, 0)}


class DihedralOp(NamedTuple):
    flip: bool
    k: int

    @property
    def is_identity(self) -> bool:
        return not self.flip and self.k % 4 == 0

    def apply(self, batch: torch.Tensor) -> torch.Tensor:
        if self.flip:
            batch = batch.flip(-1)
        return torch.rot90(batch, self.k, dims=(-2, -1)) if self.k % 4 else batch

    def invert(self, batch: torch.Tensor) -> torch.Tensor:
        if self.k % 4:
            batch = torch.rot90(batch, -self.k, dims=(-2, -1))
        return batch.flip(-1) if self.flip else batch

    def map_vector(self, vector: tuple[int, int]) -> tuple[int, int]:
        """Where a (row, col) direction of the original image points after the transform."""
        dr, dc = vector
        if self.flip:
            dc = -dc
        for _ in range(self.k % 4):
            dr, dc = -dc, dr  # a counter-clockwise quarter turn: right becomes up
        return dr, dc


IDENTITY = DihedralOp(False, 0)
DIHEDRAL_OPS: tuple[DihedralOp, ...] = tuple(DihedralOp(f, k) for f in (False, True) for k in range(4))


def permute_directions(tensor: torch.Tensor, op: DihedralOp, order: Sequence[str] = "LRUD",
                       dim: int = 1) -> torch.Tensor:
    """Re-order direction channels of a map that was predicted on an ``op``-transformed image and
    already spatially inverted: the original direction ``d`` was predicted in channel ``op(d)``."""
    order = list(order)
    by_vector = {_DIRECTION_VECTORS[name]: i for i, name in enumerate(order)}
    source = [by_vector[op.map_vector(_DIRECTION_VECTORS[name])] for name in order]
    return tensor.index_select(dim, torch.tensor(source, device=tensor.device))
