"""Real mouse presses and key presses through napari's own dispatch, shared by the widget tests."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from napari.utils._proxies import ReadOnlyWrapper
from napari.utils.interactions import mouse_press_callbacks
from napari.utils.key_bindings import coerce_keybinding
from scipy import ndimage


@dataclass
class MouseEvent:
    type: str
    position: tuple
    modifiers: list = field(default_factory=list)
    is_dragging: bool = False
    view_direction: object = None
    dims_displayed: tuple = (0, 1)
    dims_point: tuple = (0, 0)
    handled: bool = False


def click(layer, data_rc, modifiers):
    """A real mouse press through napari's callback dispatch, at data (row, col)."""
    world = tuple(np.asarray(layer.data_to_world(data_rc)))
    mouse_press_callbacks(layer, ReadOnlyWrapper(MouseEvent("mouse_press", world, list(modifiers)),
                                                 exceptions=("handled",)))


def press(layer, key):
    layer.keymap[coerce_keybinding(key)](layer)


def deepest(labels, label):
    """A pixel deep inside an instance (max of the distance transform)."""
    dist = ndimage.distance_transform_edt(labels == label)
    return tuple(int(v) for v in np.unravel_index(dist.argmax(), labels.shape))
