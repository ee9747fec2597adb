"""Segment widget: run a zoo model on an image layer in a thread, with progress and Cancel.

Outputs ``<image> instances`` (Labels + features table) and ``<image> classes`` (Labels, one fixed
colour per class, legend in the widget); see :mod:`cellzoo._napari._layers`.
Every field is checked on change: an invalid one turns red with the reason in its tooltip and
Run stays disabled until it is fixed. An image without content (1×1, all zero, all NaN, constant) is
refused and a model/image mismatch (H&E into a fluorescence model or the reverse) is warned about,
both in words above Run (:mod:`cellzoo.infer.checks`). The image field follows the image layer the
user opens or selects.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (QCheckBox, QComboBox, QFormLayout, QHBoxLayout, QLabel, QLineEdit,
                            QPushButton, QSpinBox, QVBoxLayout, QWidget)
from superqt import QCollapsible

from cellzoo.annotate import prepare_instances, sync_classes
from cellzoo.types import Message, Progress

from ._layers import class_colors_for, legend_widget, show_segmentation
from ._scroll import scroll_layout
from ._slides import add_slide_labels, field_of_view, slide_info
from ._job_panel import JobPanel
from ._worker import add_broken_models, mark_field, unreadable_user_models

DEVICES = ("auto", "cpu", "cuda", "mps")
#: shown text -> value passed to the engine's ``scale`` (None: the model's own default)
SCALES = {"model default": None, "auto (measure nucleus size)": "auto", "0.5": "0.5", "1": "1", "2": "2"}

NORMALIZATIONS = {
    "auto": "auto (8-bit as is, 16-bit / float stretched)",
    "percentile": "percentile stretch (1–99.8 %)",
    "none": "none (values used as they are)",
}
STATUS_TEXT = {"embedded": "embedded", "cached": "cached", "downloadable": "download", "user": "your model",
               "missing": "missing"}


def _zoo():
    """``cellzoo.zoo`` when it exports the catalogue functions, else its ``catalog`` module."""
    from cellzoo import zoo

    if hasattr(zoo, "list_models") and hasattr(zoo, "default_model_name"):
        return zoo
    from cellzoo.zoo import catalog

    return catalog


def _device_problem(name: str) -> str | None:
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        return "No CUDA GPU is available to PyTorch on this computer; choose auto or cpu."
    if name == "mps":
        backend = getattr(torch.backends, "mps", None)
        if not (backend is not None and backend.is_available()):
            return "Apple MPS is not available on this computer; choose auto or cpu."
    return None


def _format_value(value: Any) -> str:
    return "" if value is None else repr(value) if isinstance(value, float) else str(value)


def _parse_value(text: str, default: Any, key: str = "") -> Any:
    """Parse a threshold field as the type of its default; raise ValueError with a reason."""
    text = text.strip()
    if isinstance(default, bool):
        raise TypeError  # booleans use check boxes
    if default is None:
        if not text:
            return None
        return float(text)
    if not text:
        raise ValueError("empty; type a number or press 'Restore defaults'")
    if isinstance(default, int):
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a whole number") from None
    else:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
    if value < 0:
        raise ValueError("must not be negative")
    if "threshold" in key and isinstance(default, float) and 0.0 <= default <= 1.0 and value > 1:
        raise ValueError("a probability threshold must be between 0 and 1")
    return value


class SegmentWidget(QWidget):
    """Dock widget: image, model, device, tiles, TTA, thresholds, channel, normalisation, plane/stack."""

    def __init__(self, napari_viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self._job = None
        self._models: dict[str, Any] = {}          # name -> loaded model (kept between runs)
        self._infos: dict[str, Any] = {}           # name -> zoo ModelInfo
        self._defaults: dict[str, dict] = {}       # name -> default post-processing params
        self._param_fields: dict[str, QWidget] = {}
        self.last_result: dict[str, Any] | None = None
        self._partial = None  # the slide result's layer while regions are being written
        self._partial_refreshed = 0.0

        self.image_combo = QComboBox()
        self.image_combo.setToolTip("The image layer to segment.")
        self.model_combo = QComboBox()
        self.model_combo.setToolTip("Model from the zoo; its status says whether the weights are embedded, "
                                    "cached, or will be downloaded on first use.")
        self.device_combo = QComboBox()
        self.device_combo.addItems(DEVICES)
        self.device_combo.setToolTip("auto uses a CUDA GPU, then Apple MPS, then the CPU.")
        self.tile_spin = QSpinBox()
        self.tile_spin.setRange(0, 8192)
        self.tile_spin.setSingleStep(64)
        self.tile_spin.setSpecialValueText("auto (by memory)")
        self.tile_spin.setSuffix(" px")
        self.tile_spin.setToolTip("Tile edge including the overlap; auto picks it from free memory.")
        self.tta_check = QCheckBox("test-time augmentation (8 flips/rotations, slower)")
        self.scale_combo = QComboBox()
        self.scale_combo.setEditable(True)
        for text, value in SCALES.items():
            self.scale_combo.addItem(text, value)
        self.scale_combo.setToolTip("Resize the image by this factor before segmenting (above 1 when the nuclei "
                                    "look smaller than in the model's training images); the layers keep the "
                                    "image's size. auto measures the nucleus size in a first pass (models that "
                                    "declare their best size, e.g. cellzoo-fluo). Type any factor.")
        self.channel_combo = QComboBox()
        self.channel_combo.setToolTip("Which channel to segment; for fluorescence pick the nuclear stain.")
        self.normalize_combo = QComboBox()
        for key, text in NORMALIZATIONS.items():
            self.normalize_combo.addItem(text, key)
        self.scope_combo = QComboBox()
        self.scope_combo.addItem("current plane", "plane")
        self.scope_combo.addItem("whole stack (each plane on its own)", "stack")
        self.scope_combo.setToolTip("For 3-D or time-lapse images: segment only the plane on screen, or all.")
        # whole slides (opened lazily by the Cell Zoo reader): what to segment and where the results go
        self.slide_area = QComboBox()
        self.slide_area.addItem("field of view (what the canvas shows)", "view")
        self.slide_area.addItem("whole slide", "all")
        self.slide_area.addItem("last rectangle of a Shapes layer", "rect")
        self.slide_area.setToolTip("Slides are segmented region by region in the background, in bounded memory; "
                                   "the result is a multiscale Labels layer backed by an OME-Zarr store.")
        self.slide_out = QLineEdit(str(Path.home() / "cellzoo-slides"))
        self.slide_out.setToolTip("Folder for slide results: <slide>-<time>.ome.zarr, _nuclei.csv and .geojson "
                                  "(QuPath); nothing is ever overwritten")

        self.refresh_button = QPushButton("↻")
        self.refresh_button.setFixedWidth(28)
        self.refresh_button.setToolTip("Re-read the model list (e.g. after `cellzoo zoo import`)")
        self.refresh_button.clicked.connect(lambda *_: self.refresh_models())
        model_row = QHBoxLayout()
        model_row.addWidget(self.model_combo, 1)
        model_row.addWidget(self.refresh_button)
        self.open_slide_button = QPushButton("Open slide…")
        self.open_slide_button.setToolTip("Open a whole slide (SVS, NDPI, pyramidal TIFF, OME-Zarr, …) lazily as a "
                                          "multiscale layer; it is never loaded whole")
        self.open_slide_button.clicked.connect(self._open_slide_dialog)
        image_row = QHBoxLayout()
        image_row.addWidget(self.image_combo, 1)
        image_row.addWidget(self.open_slide_button)

        form = QFormLayout()
        form.addRow("image", image_row)
        form.addRow("model", model_row)
        form.addRow("device", self.device_combo)
        form.addRow("tile size", self.tile_spin)
        form.addRow("", self.tta_check)
        form.addRow("scale", self.scale_combo)
        form.addRow("channel", self.channel_combo)
        form.addRow("normalise", self.normalize_combo)
        form.addRow("planes", self.scope_combo)
        form.addRow("slide area", self.slide_area)
        form.addRow("slide results", self.slide_out)
        self._form = form

        self.advanced = QCollapsible("Advanced: post-processing thresholds")
        self._params_box = QWidget()
        self._params_form = QFormLayout(self._params_box)
        self.restore_button = QPushButton("Restore defaults")
        self.restore_button.clicked.connect(self.restore_defaults)
        self.advanced.addWidget(self._params_box)
        self.advanced.addWidget(self.restore_button)

        self.run_button = QPushButton("Run")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        self.jobs = JobPanel(self.run_button, self.cancel_button, self.status_label)
        self.device_label = QLabel("device used: –")
        self.device_label.setToolTip("The device the last run actually used.")
        self.legend_box = QWidget()
        self.legend_layout = QVBoxLayout(self.legend_box)
        self.legend_layout.setContentsMargins(0, 0, 0, 0)

        self.warning_label = QLabel("")
        self.warning_label.setObjectName("cellzoo_warning")
        self.warning_label.setWordWrap(True)
        self.warning_label.setStyleSheet("color: #ffb000; font-weight: bold;")
        self.warning_label.setVisible(False)
        self._content_checks: dict[tuple, tuple[str | None, str | None]] = {}

        layout = scroll_layout(self)  # fits a 1280×800 screen: the dock scrolls instead of growing
        layout.addLayout(form)
        layout.addWidget(self.warning_label)
        layout.addWidget(self.advanced)
        layout.addLayout(buttons)
        layout.addWidget(self.jobs.progress_bar)
        layout.addWidget(self.status_label)
        layout.addWidget(self.device_label)
        layout.addWidget(self.legend_box)
        layout.addStretch(1)

        self._fill_models()
        self._refresh_images()
        self.viewer.layers.events.inserted.connect(self._refresh_images)
        self.viewer.layers.events.removed.connect(self._refresh_images)
        self.viewer.layers.events.reordered.connect(self._refresh_images)
        self.viewer.layers.selection.events.active.connect(self._on_active_layer)
        # a stack's plane checks wait until the slider rests (playing a time-lapse must not stall)
        self._plane_timer = QTimer(self)
        self._plane_timer.setSingleShot(True)
        self._plane_timer.setInterval(150)
        self._plane_timer.timeout.connect(self._on_plane_changed)
        self.viewer.dims.events.current_step.connect(self._plane_moved)
        self.image_combo.currentIndexChanged.connect(self._on_image_changed)
        self.model_combo.currentIndexChanged.connect(self._on_model_changed)
        self.scale_combo.currentTextChanged.connect(self.validate)
        for signal in (self.device_combo.currentIndexChanged, self.tile_spin.valueChanged,
                       self.channel_combo.currentIndexChanged, self.scope_combo.currentIndexChanged,
                       self.slide_area.currentIndexChanged, self.slide_out.textChanged):
            signal.connect(self.validate)
        self._on_image_changed()
        self._on_model_changed()

    # ------------------------------------------------------------------ fields
    def _fill_models(self) -> None:
        current = self.model_combo.currentData()
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        try:
            infos = _zoo().list_models()
        except Exception as exc:  # a broken registry must not break the widget; show why
            infos = []
            self.status_label.setText(f"The model list could not be read: {exc}")
        self._infos = {info.name: info for info in infos}
        for info in infos:
            self.model_combo.addItem(f"{info.name}  [{STATUS_TEXT.get(info.status, info.status)}]", info.name)
        add_broken_models(self.model_combo, unreadable_user_models(self._infos))
        default = current
        if default is None:
            default = _zoo().default_model_name()
        index = self.model_combo.findData(default) if default is not None else -1  # None: a broken entry
        self.model_combo.setCurrentIndex(max(index, 0))
        self.model_combo.blockSignals(False)

    def refresh_models(self) -> None:
        """Re-read the zoo (e.g. after a fine-tuned model was saved) keeping the selection."""
        self._fill_models()
        # user models can be replaced on disk under the same name: load them afresh next time
        for name in [n for n in self._models if getattr(self._infos.get(n), "status", "user") == "user"]:
            del self._models[name]
            self._defaults.pop(name, None)
        self._on_model_changed()

    def _image_layers(self):
        from napari.layers import Image

        return [layer for layer in self.viewer.layers if isinstance(layer, Image)]

    def _refresh_images(self, event=None) -> None:
        current = self.image_combo.currentText()
        from napari.layers import Image

        if getattr(event, "type", None) == "inserted" and isinstance(getattr(event, "value", None), Image):
            current = event.value.name  # the image just opened is the one to segment
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        for layer in self._image_layers():
            self.image_combo.addItem(layer.name)
        index = self.image_combo.findText(current)
        if index < 0 and self.image_combo.count():
            index = self.image_combo.count() - 1  # newest image by default
        self.image_combo.setCurrentIndex(index)
        self.image_combo.blockSignals(False)
        self._on_image_changed()

    def _on_active_layer(self, event=None) -> None:
        """Selecting an image layer in the layer list selects it here too (other layers change nothing)."""
        from napari.layers import Image

        layer = self.viewer.layers.selection.active
        if isinstance(layer, Image) and layer.name != self.image_combo.currentText():
            index = self.image_combo.findText(layer.name)
            if index >= 0:
                self.image_combo.setCurrentIndex(index)

    def _plane_moved(self, event=None) -> None:
        self._plane_timer.start()

    def _on_plane_changed(self, event=None) -> None:
        """Another plane on screen: the content checks of a stack's plane are redone."""
        layer = self.image_layer
        if layer is not None and layer.ndim > 2:
            self.validate()

    @property
    def image_layer(self):
        name = self.image_combo.currentText()
        return self.viewer.layers[name] if name and name in self.viewer.layers else None

    def _channels(self, layer) -> int:
        """Number of channels in the last axis (1 for gray layers)."""
        if layer is None:
            return 1
        return int(layer.data.shape[-1]) if layer.rgb else 1

    def _on_image_changed(self, *_) -> None:
        layer = self.image_layer
        channels = self._channels(layer)
        self.channel_combo.blockSignals(True)
        self.channel_combo.clear()
        if channels == 1:
            self.channel_combo.addItem("single channel", None)
        else:
            self.channel_combo.addItem("all (RGB)", None)
            names = ["red", "green", "blue", "alpha"]
            for k in range(channels):
                self.channel_combo.addItem(f"{k} ({names[k] if k < 4 else 'channel'})", k)
        self.channel_combo.blockSignals(False)
        is_stack = layer is not None and layer.ndim > 2
        self.scope_combo.setEnabled(is_stack)
        is_slide = layer is not None and slide_info(layer) is not None
        for field in (self.slide_area, self.slide_out):
            self._form.setRowVisible(field, is_slide)
        # fluorescence (gray, not 8-bit) is usually dim: stretch by default
        self.validate()

    def _on_model_changed(self, *_) -> None:
        name = self.model_combo.currentData()
        for field in self._param_fields.values():
            self._params_form.removeRow(field)
        self._param_fields = {}
        defaults = self._default_params(name) if name else {}
        for key, value in defaults.items():
            if isinstance(value, bool):
                field = QCheckBox()
                field.setChecked(value)
                field.stateChanged.connect(self.validate)
            else:
                field = QLineEdit(_format_value(value))
                field.setToolTip(f"default: {_format_value(value) or 'none'}")
                field.textChanged.connect(self.validate)
            field.setObjectName(f"param_{key}")
            self._param_fields[key] = field
            self._params_form.addRow(key.replace("_", " "), field)
        self.restore_button.setEnabled(bool(defaults))
        self.validate()

    def _default_params(self, name: str) -> dict[str, Any]:
        if name in self._defaults:
            return self._defaults[name]
        params: dict[str, Any] = {}
        try:
            if name in self._models:
                params = self._models[name].default_postprocess_params()
            elif name in self._infos:
                from cellzoo.models import build_model

                info = self._infos[name]
                params = build_model(info.family, info.config).default_postprocess_params()
        except Exception:  # unknown family etc.: no advanced fields; Run will report the real problem
            params = {}
        self._defaults[name] = dict(params or {})
        return self._defaults[name]

    def restore_defaults(self) -> None:
        defaults = self._default_params(self.model_combo.currentData())
        for key, field in self._param_fields.items():
            if isinstance(field, QCheckBox):
                field.setChecked(bool(defaults[key]))
            else:
                field.setText(_format_value(defaults[key]))
        self.validate()

    def params(self) -> dict[str, Any]:
        """The post-processing parameters as typed in (raises ValueError for an invalid field)."""
        defaults = self._default_params(self.model_combo.currentData())
        out = {}
        for key, field in self._param_fields.items():
            out[key] = field.isChecked() if isinstance(field, QCheckBox) else _parse_value(field.text(), defaults[key], key)
        return out

    # ------------------------------------------------------------------ validation
    def validate(self, *_) -> bool:
        """Mark invalid fields (red, reason in the tooltip) and enable Run only when all are valid."""
        valid = True
        layer = self.image_layer
        reason = None
        if layer is None:
            reason = "Open an image first (File > Open, or drag it onto the viewer)."
        elif layer.ndim < 2:
            reason = f"{layer.name} is not an image (shape {layer.data.shape})."
        elif getattr(layer, "multiscale", False) and slide_info(layer) is None:
            reason = f"{layer.name} is a multiscale pyramid; open its full-resolution level as its own layer."
        problem, mismatch = self._content_check(layer) if reason is None else (None, None)
        if problem:
            reason = f"{layer.name}: {problem}."
        valid &= mark_field(self.image_combo, reason)
        if layer is not None and slide_info(layer) is not None:
            valid &= mark_field(self.slide_area, self._slide_area_problem(layer))
            folder = self.slide_out.text().strip()
            valid &= mark_field(self.slide_out, None if folder and not Path(folder).expanduser().is_file()
                                else "Give a folder for the slide's results.")
        shown = reason if problem else mismatch
        self.warning_label.setText(f"⚠ {shown}" if shown else "")
        self.warning_label.setVisible(bool(shown))

        name = self.model_combo.currentData()
        info = self._infos.get(name)
        reason = None
        if name is None:
            reason = "No model is available; check the installation (cellzoo zoo list)."
        elif info is not None and info.status == "missing":
            reason = (f"The weights of {name} are not available here and there is no download address; "
                      "import them with `cellzoo zoo import` or pick another model.")
        valid &= mark_field(self.model_combo, reason)

        valid &= mark_field(self.device_combo, _device_problem(self.device_combo.currentText()))
        tile = self.tile_spin.value()
        reason = None
        if tile and tile < 64:
            reason = f"A tile of {tile} px is too small; use at least 64 px or auto."
        valid &= mark_field(self.tile_spin, reason)
        from cellzoo.infer.engine import scale_factor_problem  # torch: imported when the widget validates

        scale = self.scale_value()
        reason = None if scale in (None, "auto") else scale_factor_problem(scale)
        valid &= mark_field(self.scale_combo, reason and reason[0].upper() + reason[1:] + ".")

        defaults = self._default_params(name) if name else {}
        for key, field in self._param_fields.items():
            if isinstance(field, QCheckBox):
                continue
            try:
                _parse_value(field.text(), defaults[key], key)
                problem = None
            except ValueError as exc:
                problem = f"{key.replace('_', ' ')}: {exc}"
            valid &= mark_field(field, problem)
        running = self._job is not None and self._job.running
        self.run_button.setEnabled(bool(valid) and not running)
        return bool(valid)

    def _content_check(self, layer) -> tuple[str | None, str | None]:
        """(why the pixels cannot be segmented, model/image mismatch warning) for what Run would segment.

        Checked on the plane on screen (the whole stack is not read here); cached per data, plane,
        channel and model, since validate runs on every field change.
        """
        from cellzoo.infer.checks import image_problem, modality_warning

        if slide_info(layer) is not None:  # a slide: its coarsest level stands for it (never the whole slide)
            data = layer.data[-1] if getattr(layer, "multiscale", False) else layer.data
            key = (id(layer.data), "slide", self.model_combo.currentData())
            if key not in self._content_checks:
                pixels = np.asarray(data if max(data.shape[:2]) <= 4096 else data[::8, ::8])
                info = self._infos.get(self.model_combo.currentData())
                problem = image_problem(pixels, None)
                mismatch = modality_warning(pixels, info, None) if info is not None and not problem else None
                self._content_checks = {key: (problem, mismatch)}
            return self._content_checks[key]
        stack = layer.ndim > 2 and self.scope_combo.currentData() == "stack"
        plane = self._plane_index(layer) if layer.ndim > 2 else ()
        channel = self.channel_combo.currentData()
        name = self.model_combo.currentData()
        key = (id(layer.data), plane, stack, channel, name)
        if key not in self._content_checks:
            pixels = np.asarray(layer.data[plane] if plane else layer.data)
            if layer.rgb is False and pixels.ndim == 3:
                channel = None
            # a blank plane in a stack is fine (e.g. an empty time point): only single images are refused
            problem = None if stack else image_problem(pixels, channel)
            info = self._infos.get(name)
            mismatch = modality_warning(pixels, info, channel) if info is not None and not problem else None
            self._content_checks = {key: (problem, mismatch)}  # only the latest: layers come and go
        return self._content_checks[key]

    # ------------------------------------------------------------------ run
    def _plane_index(self, layer) -> tuple[int, ...]:
        """Index of the plane on screen in the layer's leading (non-spatial) axes."""
        lead = layer.ndim - 2
        if lead <= 0:
            return ()
        point = layer.world_to_data(self.viewer.dims.point[-layer.ndim:])
        shape = layer.data.shape[:lead]
        return tuple(int(min(max(round(float(p)), 0), s - 1)) for p, s in zip(point[:lead], shape))

    def scale_value(self) -> str | None:
        """None (the model's default), "auto", or the factor as typed."""
        text = self.scale_combo.currentText().strip()
        index = self.scale_combo.findText(text)
        return self.scale_combo.itemData(index) if index >= 0 else text

    def settings(self) -> dict[str, Any]:
        return {"model": self.model_combo.currentData(), "device": self.device_combo.currentText(),
                "tile": self.tile_spin.value() or None, "tta": self.tta_check.isChecked(),
                "scale": self.scale_value(),
                "channel": self.channel_combo.currentData(), "normalize": self.normalize_combo.currentData(),
                "params": self.params(), "scope": self.scope_combo.currentData()}

    def open_slide(self, path: str | Path):
        """Add ``path`` as a lazy multiscale Image layer (selected here)."""
        from ._slides import slide_levels

        data, kwargs = slide_levels(path)
        return self.viewer.add_image(data, **kwargs)

    def _open_slide_dialog(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getOpenFileName(self, "Open a whole slide", str(Path.home()),
                                              "Slides (*.svs *.ndpi *.scn *.bif *.mrxs *.qptiff *.tif *.tiff "
                                              "*.zgroup *.zattrs zarr.json);;All files (*)")
        if path:
            target = Path(path)
            if target.name in (".zgroup", ".zattrs", "zarr.json"):  # a zarr store is a folder: pick its marker
                target = target.parent
            try:
                self.open_slide(target)
            except (OSError, ValueError) as exc:
                self.status_label.setText(f"Could not open {target.name}: {exc}")

    def _slide_area_problem(self, layer) -> str | None:
        if self.slide_area.currentData() == "rect" and self._drawn_rectangle(layer) is None:
            return "Draw a rectangle in a Shapes layer first (or choose the field of view / whole slide)."
        return None

    def _drawn_rectangle(self, layer) -> tuple[int, int, int, int] | None:
        """(y0, x0, y1, x1) in level-0 pixels of the last rectangle of the newest Shapes layer."""
        from napari.layers import Shapes

        for shapes in reversed(list(self.viewer.layers)):
            if isinstance(shapes, Shapes) and len(shapes.data):
                corners = np.asarray([layer.world_to_data(shapes.data_to_world(v)) for v in shapes.data[-1]])
                y0, x0 = corners[:, -2:].min(axis=0) if not layer.rgb else corners[:, :2].min(axis=0)
                y1, x1 = corners[:, -2:].max(axis=0) if not layer.rgb else corners[:, :2].max(axis=0)
                return int(y0), int(x0), int(np.ceil(y1)), int(np.ceil(x1))
        return None

    def _slide_bounds(self, layer) -> tuple[int, int, int, int] | None:
        area = self.slide_area.currentData()
        if area == "all":
            return None
        return self._drawn_rectangle(layer) if area == "rect" else field_of_view(layer, self.viewer)

    def run(self) -> None:
        if not self.validate():
            return
        layer = self.image_layer
        settings = self.settings()
        if slide_info(layer) is not None:
            self._run_slide(layer, settings)
            return
        whole_stack = layer.ndim > 2 and settings["scope"] == "stack"
        plane = () if whole_stack else self._plane_index(layer)
        data = layer.data
        lead = layer.ndim - 2
        if whole_stack:
            lead_shape = data.shape[:lead]
            spatial = data.shape[lead:]
            pixels = np.asarray(data).reshape((-1, *spatial))  # T×Z×… planes -> one axis
        else:
            lead_shape = ()
            pixels = np.asarray(data[plane]) if plane else np.asarray(data)
        request = {"layer": layer.name, "plane": plane, "whole_stack": whole_stack, "lead_shape": lead_shape,
                   "settings": settings}

        def job(cancel):
            return self._segment(pixels, request, cancel)

        tile = f"tiles of {settings['tile']} px" if settings["tile"] else "automatic tiles"
        self._job = self.jobs.start(
            job, description=f"Segmenting {layer.name}",
            status=f"Segmenting {layer.name} with {settings['model']} …", on_event=self._on_event,
            on_returned=self._apply, on_finished=self._finished,
            cancelled_text="Cancelled; no layers were changed.",
            oom_advice=(f"the {settings['device']} device has not enough memory for this image with {tile}; "
                        "choose a smaller tile size (or the CPU device) and run again"))

    def _run_slide(self, layer, settings: dict) -> None:
        """A slide: region by region in the worker thread, into an OME-Zarr store; never the whole slide
        in memory."""
        import time

        bounds = self._slide_bounds(layer)
        out_dir = Path(self.slide_out.text().strip()).expanduser()
        stem = f"{layer.name}-{time.strftime('%Y%m%d-%H%M%S')}"  # a new name per run: nothing is overwritten
        path = slide_info(layer)["path"]
        request = {"layer": layer.name, "settings": settings, "slide": True, "bounds": bounds}
        area = "the whole slide" if bounds is None else f"{bounds[2] - bounds[0]}×{bounds[3] - bounds[1]} px"

        def job(cancel):
            from cellzoo.slide import segment_slide_iter

            model = yield from self._model(settings["model"])
            result = yield from segment_slide_iter(
                model, path, out_dir, stem=stem, bounds=bounds, device=settings["device"], tile=settings["tile"],
                tta=settings["tta"], params=settings["params"], normalize=settings["normalize"],
                scale=settings["scale"] if settings["scale"] not in (None, "auto") else None, cancel=cancel)
            return {"request": request, "slide_result": result, "class_names": model.class_names}

        self._job = self.jobs.start(
            job, description=f"Segmenting {layer.name}", status=f"Segmenting {area} of {layer.name} with "
            f"{settings['model']} …", on_event=self._on_event, on_returned=self._apply, on_finished=self._finished,
            cancelled_text="Cancelled; no layers were changed and no result files were kept.",
            oom_advice="choose a smaller tile size (or the CPU device) and run again")

    def _model(self, name: str):
        """Worker thread: the model, loaded once per widget (yields the loading progress)."""
        if name not in self._models:
            from cellzoo.infer import resolve_model

            yield Progress("loading model", 0, 0, name)  # unknown length (may download)
            self._models[name] = resolve_model(name)
            yield Progress("loading model", 1, 1, name)
        return self._models[name]

    def _segment(self, pixels: np.ndarray, request: dict, cancel):
        """Runs in the worker thread: load the model (once), then the engine generator."""
        from cellzoo.infer import segment_iter, segment_stack_iter

        settings = request["settings"]
        model = yield from self._model(settings["model"])
        kwargs = dict(tile=settings["tile"], device=settings["device"], tta=settings["tta"],
                      params=settings["params"], channel=settings["channel"], normalize=settings["normalize"],
                      scale=settings["scale"], cancel=cancel)
        if request["whole_stack"]:
            results = yield from segment_stack_iter(model, pixels, **kwargs)
        else:
            results = [(yield from segment_iter(model, pixels, **kwargs))]
        # the O(pixels) work of showing a result (class per instance, features, index) stays in this thread
        prepared = [prepare_instances(r.labels, r.class_map(), default_class=1) for r in results]
        return {"request": request, "results": results, "class_names": model.class_names, "prepared": prepared}

    def _on_event(self, event) -> None:
        # Progress goes to the panel's bar; the status line keeps the messages
        if isinstance(event, Message):
            self.status_label.setText(event.text)
        elif type(event).__name__ == "SlideStore":
            self._show_partial_slide(event)
        elif isinstance(event, Progress) and event.stage == "regions" and self._partial is not None:
            import time

            if time.monotonic() - self._partial_refreshed > 1.0:  # at most once a second: napari re-reads
                self._partial_refreshed = time.monotonic()
                self._partial.refresh()

    def _show_partial_slide(self, event) -> None:
        """The slide's label store while it is being written: regions appear as they are done."""
        layer = self.image_layer
        if layer is None or slide_info(layer) is None:
            return
        from types import SimpleNamespace

        self._partial = add_slide_labels(self.viewer, layer, event.path, [], SimpleNamespace(level=event.level),
                                         name=f"{layer.name} instances (in progress)")
        self._partial_refreshed = 0.0
        self.viewer.layers.selection.active = layer  # the image stays the one to segment

    def _drop_partial(self) -> None:
        if self._partial is not None and self._partial in self.viewer.layers:
            self.viewer.layers.remove(self._partial)
        self._partial = None

    def cancel(self) -> None:
        """Cancel button: ready again at once; the thread stops at its next tile or stage."""
        self.jobs.cancel()

    def _finished(self, job) -> None:
        self._drop_partial()  # done, failed or cancelled: the final store (if any) has its own layer now
        self.validate()

    def _apply(self, output: dict) -> None:
        """Main thread: turn the Instances into the two Labels layers."""
        if "slide_result" in output:
            self._apply_slide(output)
            return
        request, results = output["request"], output["results"]
        if request["layer"] not in self.viewer.layers:
            raise ValueError(f"the image layer {request['layer']!r} was closed while it was being segmented; "
                             "open it again and press Run")
        layer = self.viewer.layers[request["layer"]]
        settings = request["settings"]
        info = self._infos.get(settings["model"])
        class_names = list(results[0].class_names or output["class_names"])
        class_colors = class_colors_for(class_names, getattr(info, "class_colors", None))
        spatial = tuple(layer.data.shape[layer.ndim - 2:layer.ndim])
        full_shape = tuple(layer.data.shape[:layer.ndim])
        inst_name = f"{layer.name} instances"

        prepared = output.get("prepared") or [None] * len(results)
        index = None
        if layer.ndim == 2:
            labels, classes, scores = self._plane_arrays(results[0], 0, prepared[0])
            index = prepared[0][2] if prepared[0] is not None else None
        else:
            existing = self.viewer.layers[inst_name] if inst_name in self.viewer.layers else None
            if existing is not None and existing.data.shape == full_shape and not request["whole_stack"]:
                labels = np.asarray(existing.data, dtype=np.int32).copy()
                cls_name = f"{layer.name} classes"
                classes = np.asarray(self.viewer.layers[cls_name].data, dtype=np.uint8).copy() \
                    if cls_name in self.viewer.layers else (labels > 0).astype(np.uint8)
                scores = dict(existing.metadata.get("cellzoo", {}).get("scores", {}))
            else:
                labels = np.zeros(full_shape, np.int32)
                classes = np.zeros(full_shape, np.uint8)
                scores = {}
            planes = [np.unravel_index(k, request["lead_shape"]) for k in range(len(results))] \
                if request["whole_stack"] else [request["plane"]]
            for plane, result, ready in zip(planes, results, prepared):
                plane = tuple(int(p) for p in plane)
                labels[plane] = 0
                offset = int(labels.max())  # ids stay unique across planes, so the table has one row each
                plane_labels, plane_classes, plane_scores = self._plane_arrays(result, offset, ready)
                labels[plane], classes[plane] = plane_labels, plane_classes
                scores = {k: v for k, v in scores.items() if k <= offset or k in plane_scores} | plane_scores
        assert labels.shape[-2:] == spatial
        meta = results[0].meta
        inst, _cls = show_segmentation(self.viewer, layer, labels, classes, class_names=class_names,
                                       class_colors=class_colors, scores=scores, model=settings["model"],
                                       meta={"device": meta.get("device"), "settings": settings}, index=index)
        # Instances.count runs np.unique over the image: the index already knows the number
        count = int(sum(len(ready[2]) if ready is not None else r.count for r, ready in zip(results, prepared)))
        seconds = sum(float(r.meta.get("seconds", 0.0)) for r in results)
        scales = sorted({float(r.meta.get("scale", 1.0)) for r in results})
        self.status_label.setText(f"{count} instances in {seconds:.1f} s with {settings['model']}"
                                  + (f" · {len(results)} planes" if len(results) > 1 else "")
                                  + (f" · scale {', '.join(f'{v:.2f}' for v in scales)}" if scales != [1.0] else ""))
        self._show_device(meta)
        self._show_legend(class_names, class_colors)
        self.last_result = {"instances_layer": inst.name, "count": count, "device": meta.get("device"),
                            "results": results}
        self.viewer.layers.selection.active = inst

    def _apply_slide(self, output: dict) -> None:
        request, result = output["request"], output["slide_result"]
        if request["layer"] not in self.viewer.layers:
            raise ValueError(f"the slide layer {request['layer']!r} was closed while it was being segmented; its "
                             f"results are in {result.store}")
        layer = self.viewer.layers[request["layer"]]
        labels = add_slide_labels(self.viewer, layer, result.store, output["class_names"], result)
        self.status_label.setText(f"{result.count} nuclei in {result.seconds:.1f} s, {result.regions} region(s)"
                                  + (f" ({result.skipped} without tissue skipped)" if result.skipped else "")
                                  + f"; results in {result.store.parent}")
        self._show_device(result.meta)
        self.last_result = {"instances_layer": labels.name, "count": result.count, "device": result.meta.get("device"),
                            "slide_result": result}

    def _show_device(self, meta: dict) -> None:
        """What ran: the device and the precision ("cpu, bf16")."""
        precision = meta.get("precision")
        self.device_label.setText(f"device used: {meta.get('device', '?')}" + (f", {precision}" if precision else ""))

    @staticmethod
    def _plane_arrays(result, offset: int, prepared=None):
        if prepared is not None:  # made in the worker thread by prepare_instances
            labels, classes = prepared[0], prepared[1]
        else:
            labels = np.asarray(result.labels, dtype=np.int32)
            # one class per instance, so the class layer and the table agree
            classes = sync_classes(labels, np.asarray(result.class_map(), dtype=np.uint8), default_class=1)
        if offset:
            labels = np.where(labels > 0, labels + offset, 0).astype(np.int32)
        scores = {int(k) + offset: float(v) for k, v in result.scores.items()}
        return labels, classes, scores

    def _show_legend(self, class_names, class_colors) -> None:
        while self.legend_layout.count():
            item = self.legend_layout.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        title = QLabel("<b>Classes</b>")
        self.legend_layout.addWidget(title)
        self.legend_layout.addWidget(legend_widget(class_names, class_colors))
        self.legend_layout.setAlignment(Qt.AlignTop)
