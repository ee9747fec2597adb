"""Evaluate widget: compare predicted instances with ground truth, per image and overall.

Inputs are either two instance layers (a 3-D layer counts as a stack of 2-D images) with optional
class layers, or two folders of label maps matched by file name (with optional class-map folders).
Only layers that hold instance maps are offered as ground truth and prediction, and only class maps
as classes (the Segment widget's links, else the pixels: :func:`cellzoo.metrics.sanity.map_kind`);
an integer Image layer that is an instance map counts too. Inputs that look wrong (a class map as
instances, maps that hardly overlap, an empty side) get a visible warning before any number.
The comparison runs :func:`cellzoo.metrics.evaluate_iter` in a background thread; the result is
shown as a table (one row per image plus the summary) and a bar chart, and can be saved as CSV.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (QComboBox, QFileDialog, QFormLayout, QGroupBox, QHBoxLayout, QHeaderView, QLabel,
                            QLineEdit, QPushButton, QStackedWidget, QTableWidget, QTableWidgetItem,
                            QVBoxLayout, QWidget)

from cellzoo._napari._plots import BarChart
from cellzoo._napari._scroll import scroll_layout
from cellzoo._napari._job_panel import JobPanel
from cellzoo._napari._worker import Job, mark_field

NONE = "(none)"
SOURCES = ("Layers", "Folders")
#: summary metrics drawn in the bar chart when present (others stay in the table)
CHART_METRICS = ("aji", "aji_plus", "dice", "dq", "sq", "pq", "f1_50", "dsb_ap50", "ap", "ap50", "mpq_plus")


def _planes(data: np.ndarray) -> list[np.ndarray]:
    data = np.asarray(data)
    if data.ndim == 2:
        return [data]
    return [data[index] for index in np.ndindex(*data.shape[:-2])]


class _PathField(QWidget):
    """A line edit with a "…" button that opens a folder dialog."""

    def __init__(self, placeholder: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.edit = QLineEdit()
        self.edit.setPlaceholderText(placeholder)
        button = QPushButton("…")
        button.setFixedWidth(28)
        button.setToolTip("Choose a folder")
        button.clicked.connect(self._browse)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.edit)
        layout.addWidget(button)

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose a folder", self.edit.text())
        if folder:
            self.edit.setText(folder)

    def path(self) -> Path | None:
        text = self.edit.text().strip()
        return Path(text).expanduser() if text else None


class EvaluateWidget(QWidget):
    """Ground truth vs prediction: per-image and summary metrics, bar chart, CSV export."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.job: Job | None = None
        self.result: Any = None
        self._pairs: list = []
        self._folder_notes: list[str] = []
        self._user_choices: set[QComboBox] = set()
        self._roles: dict[int, tuple[Any, str | None]] = {}   # id(layer) -> (data checked, role)
        self._warning_cache: dict[tuple, list[str]] = {}  # inputs -> their warnings
        self.warnings: list[str] = []

        self.source = QComboBox()
        self.source.addItems(SOURCES)
        self.source.setToolTip("Compare two Labels layers or two folders of label maps")

        # -- layers page
        self.gt_layer = QComboBox()
        self.pred_layer = QComboBox()
        self.gt_class_layer = QComboBox()
        self.pred_class_layer = QComboBox()
        layers_page = QWidget()
        form = QFormLayout(layers_page)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Ground truth", self.gt_layer)
        form.addRow("Prediction", self.pred_layer)
        form.addRow("GT classes", self.gt_class_layer)
        form.addRow("Predicted classes", self.pred_class_layer)

        # -- folders page
        self.gt_folder = _PathField("folder of ground-truth label maps")
        self.pred_folder = _PathField("folder of predicted label maps (same file names)")
        self.gt_class_folder = _PathField("optional: GT class maps")
        self.pred_class_folder = _PathField("optional: predicted class maps")
        folders_page = QWidget()
        form = QFormLayout(folders_page)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Ground truth", self.gt_folder)
        form.addRow("Prediction", self.pred_folder)
        form.addRow("GT classes", self.gt_class_folder)
        form.addRow("Predicted classes", self.pred_class_folder)

        self.pages = QStackedWidget()
        self.pages.addWidget(layers_page)
        self.pages.addWidget(folders_page)

        self.class_names = QLineEdit()
        self.class_names.setPlaceholderText("optional: other, inflammatory, epithelial, spindle")
        self.class_names.setToolTip("Names of class ids 1, 2, … for per-class PQ (comma-separated)")

        self.warning_label = QLabel("")
        self.warning_label.setObjectName("cellzoo_warning")
        self.warning_label.setWordWrap(True)
        self.warning_label.setStyleSheet("color: #ffb000; font-weight: bold;")
        self.warning_label.setVisible(False)

        self.run_button = QPushButton("Evaluate")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.jobs = JobPanel(self.run_button, self.cancel_button, self.status)

        self.table = QTableWidget(0, 0)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.setMinimumHeight(150)
        self.chart = BarChart()
        self.export_button = QPushButton("Export CSV…")
        self.export_button.setEnabled(False)

        inputs = QGroupBox("Inputs")
        box = QVBoxLayout(inputs)
        top = QFormLayout()
        top.addRow("Source", self.source)
        box.addLayout(top)
        box.addWidget(self.pages)
        bottom = QFormLayout()
        bottom.addRow("Class names", self.class_names)
        box.addLayout(bottom)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout = scroll_layout(self)  # fits a 1280×800 screen: the dock scrolls instead of growing
        layout.addWidget(inputs)
        layout.addWidget(self.warning_label)
        layout.addLayout(buttons)
        layout.addWidget(self.jobs.progress_bar)
        layout.addWidget(self.status)
        layout.addWidget(self.table)
        layout.addWidget(self.chart)
        layout.addWidget(self.export_button)
        layout.addStretch(1)

        self.source.currentIndexChanged.connect(self.pages.setCurrentIndex)
        self.source.currentIndexChanged.connect(self.validate)
        for combo in (self.gt_layer, self.pred_layer, self.gt_class_layer, self.pred_class_layer):
            combo.currentIndexChanged.connect(self.validate)
            # a choice made by hand survives refreshes; a guess gives way to a better one
            combo.activated.connect(lambda _index, combo=combo: self._user_choices.add(combo))
        for field in (self.gt_folder, self.pred_folder, self.gt_class_folder, self.pred_class_folder):
            field.edit.textChanged.connect(self.validate)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.export_button.clicked.connect(self._export_dialog)

        # once more after the event: a layer's links (metadata) are often set just after it is added
        self._late_refresh = QTimer(self)
        self._late_refresh.setSingleShot(True)
        self._late_refresh.timeout.connect(self.refresh_layers)
        events = self.viewer.layers.events
        for event in (events.inserted, events.removed, events.moved):
            event.connect(self.refresh_layers)
            event.connect(self._schedule_refresh)
        self.refresh_layers()
        self.setMinimumWidth(300)

    # ------------------------------------------------------------------ layer choices
    def _role(self, layer) -> str | None:
        """"instances", "classes" or None (not a label map) for a layer; cached per data array."""
        kind = type(layer).__name__
        if kind not in ("Labels", "Image"):
            return None
        info = layer.metadata.get("cellzoo") or {}
        if info.get("role") == "selection":
            return None  # the Correct widget's selection outline
        if kind == "Labels" and info.get("instances_layer"):
            return "classes"  # the Segment widget's / reader's class layer
        if kind == "Labels" and info.get("classes_layer"):
            return "instances"
        data = layer.data
        if kind == "Image" and (getattr(layer, "rgb", False) or getattr(layer, "multiscale", False)
                                or np.dtype(data.dtype).kind not in "iu"):
            return None
        cached = self._roles.get(id(layer))
        if cached is not None and cached[0] is data:
            return cached[1]
        from cellzoo.metrics.sanity import map_kind

        if getattr(layer, "multiscale", False):
            return None
        # a stack (possibly lazy): its first, middle and last planes stand for it, not every plane
        lead = data.shape[:-2]
        picks = {tuple(0 for _ in lead), tuple(n // 2 for n in lead), tuple(n - 1 for n in lead)}
        found = map_kind(np.stack([np.asarray(data[index]) for index in sorted(picks)])).kind
        role = found if found in ("instances", "classes") else ("instances" if kind == "Labels" else None)
        if kind == "Labels" and found == "image":
            role = "instances"  # a Labels layer is a label map by choice; the warnings say what looks odd
        self._roles[id(layer)] = (data, role)
        return role

    def _labels_layer_names(self, role: str = "instances") -> list[str]:
        return [layer.name for layer in self.viewer.layers if self._role(layer) == role]

    @staticmethod
    def _guess_gt(names: list[str], layers) -> str | None:
        words = ("truth", "ground", "gt", "annotat", "manual", "mask", "label")
        by_word = [n for n in names if any(w in n.lower() for w in words)]
        # the Segment widget's outputs carry their model: they are predictions
        hand_made = [n for n in names if "model" not in (layers[n].metadata.get("cellzoo") or {})]
        return next(iter(by_word or hand_made or names), None)

    @staticmethod
    def _guess_pred(names: list[str], layers, gt: str | None) -> str | None:
        others = [n for n in names if n != gt]
        predicted = [n for n in others if "model" in (layers[n].metadata.get("cellzoo") or {})
                     or any(w in n.lower() for w in ("pred", "instances", "result"))]
        return next(iter(reversed(predicted or others)), None)

    def _linked_classes(self, instance_name: str, class_names: list[str]) -> str:
        """The class layer linked to an instance layer, else one linked to no instance layer."""
        layers = self.viewer.layers
        if not instance_name or instance_name not in layers:
            return NONE
        link = (layers[instance_name].metadata.get("cellzoo") or {}).get("classes_layer")
        if link in class_names:
            return link
        unlinked = [n for n in class_names if not (layers[n].metadata.get("cellzoo") or {}).get("instances_layer")]
        return self._guess_gt(unlinked, layers) or NONE

    def _schedule_refresh(self, *_: Any) -> None:
        self._late_refresh.start(0)

    def refresh_layers(self, *_: Any) -> None:
        layers = self.viewer.layers
        for layer in layers:
            if type(layer).__name__ in ("Labels", "Image"):
                # renaming a layer must refresh the choices
                layer.events.name.disconnect(self.refresh_layers)
                layer.events.name.connect(self.refresh_layers)
        live = {id(layer) for layer in layers}
        self._roles = {key: value for key, value in self._roles.items() if key in live}
        names = self._labels_layer_names("instances")
        class_names = self._labels_layer_names("classes")
        gt_guess = self._guess_gt(names, layers)
        self._fill(self.gt_layer, names, gt_guess, keep=self.gt_layer in self._user_choices)
        pred_guess = self._guess_pred(names, layers, self.gt_layer.currentText())
        self._fill(self.pred_layer, names, pred_guess, keep=self.pred_layer in self._user_choices)
        if self.pred_layer.currentText() == self.gt_layer.currentText() and pred_guess:
            self.pred_layer.blockSignals(True)
            self.pred_layer.setCurrentText(pred_guess)
            self.pred_layer.blockSignals(False)
        gt_classes = self._linked_classes(self.gt_layer.currentText(), class_names)
        pred_classes = self._linked_classes(self.pred_layer.currentText(), class_names)
        if NONE in (gt_classes, pred_classes):  # per-class metrics need both sides
            gt_classes = pred_classes = NONE
        self._fill(self.gt_class_layer, [NONE, *class_names], gt_classes,
                   keep=self.gt_class_layer in self._user_choices)
        self._fill(self.pred_class_layer, [NONE, *class_names], pred_classes,
                   keep=self.pred_class_layer in self._user_choices)
        self.validate()

    def _fill(self, combo: QComboBox, names: list[str], default: str | None, keep: bool = True) -> None:
        """Set the choices; keep the current one when it was picked by hand and still exists."""
        previous = combo.currentText()
        combo.blockSignals(True)
        combo.clear()
        combo.addItems(names)
        choice = previous if keep and previous in names else default
        if choice not in names:
            choice = previous if previous in names else None
            self._user_choices.discard(combo)
        if choice in names:
            combo.setCurrentText(choice)
        combo.blockSignals(False)

    def _layer(self, combo: QComboBox):
        name = combo.currentText()
        return self.viewer.layers[name] if name and name != NONE and name in self.viewer.layers else None

    # ------------------------------------------------------------------ validation
    def _layer_problems(self) -> dict[QWidget, str | None]:
        gt, pred = self._layer(self.gt_layer), self._layer(self.pred_layer)
        problems: dict[QWidget, str | None] = {
            self.gt_layer: None if gt is not None else "Add or choose a Labels layer with the ground truth.",
            self.pred_layer: None if pred is not None else "Add or choose a Labels layer with the prediction.",
            self.gt_class_layer: None, self.pred_class_layer: None}
        if gt is not None and pred is not None:
            if gt is pred:
                problems[self.pred_layer] = "Ground truth and prediction are the same layer; choose another."
            elif gt.data.shape != pred.data.shape:
                problems[self.pred_layer] = (f"Prediction shape {pred.data.shape} differs from ground truth "
                                             f"{gt.data.shape}; both must cover the same pixels.")
        for combo, what in ((self.gt_class_layer, "GT"), (self.pred_class_layer, "Predicted")):
            layer = self._layer(combo)
            if layer is not None and gt is not None and layer.data.shape != gt.data.shape:
                problems[combo] = (f"{what} class layer shape {layer.data.shape} differs from the ground "
                                   f"truth {gt.data.shape}.")
        if (self._layer(self.gt_class_layer) is None) != (self._layer(self.pred_class_layer) is None):
            missing = self.gt_class_layer if self._layer(self.gt_class_layer) is None else self.pred_class_layer
            problems[missing] = "Per-class metrics need both class layers (or neither)."
        return problems

    def _folder_problems(self) -> dict[QWidget, str | None]:
        from cellzoo.metrics import pair_files

        fields = ((self.gt_folder, True), (self.pred_folder, True),
                  (self.gt_class_folder, False), (self.pred_class_folder, False))
        problems: dict[QWidget, str | None] = {}
        for field, required in fields:
            path = field.path()
            if path is None:
                problems[field.edit] = "Choose a folder of label maps." if required else None
            elif not path.is_dir():
                problems[field.edit] = f"{path} is not an existing folder."
            else:
                problems[field.edit] = None
        gt_cls, pred_cls = self.gt_class_folder.path(), self.pred_class_folder.path()
        if (gt_cls is None) != (pred_cls is None):
            missing = self.gt_class_folder if gt_cls is None else self.pred_class_folder
            problems[missing.edit] = "Per-class metrics need both class folders (or neither)."
        self._folder_notes = []
        if not any(problems.values()):
            # the engine's own pairing (by file stem) says what does not match
            try:
                self._pairs, self._folder_notes = pair_files(self.gt_folder.path(), self.pred_folder.path(),
                                                             gt_cls, pred_cls)
            except (ValueError, FileNotFoundError) as exc:
                text = str(exc)
                target = self.gt_folder if text.startswith("ground-truth folder") else self.pred_folder
                if "class" in text:
                    target = self.gt_class_folder if "ground-truth class" in text else self.pred_class_folder
                problems[target.edit] = text
        return problems

    def validate(self, *_: Any) -> bool:
        """Mark invalid inputs (red, tooltip says why); enable Evaluate only when all are valid."""
        layers_mode = self.source.currentText() == "Layers"
        problems = self._layer_problems() if layers_mode else self._folder_problems()
        valid = all(mark_field(widget, reason) is True for widget, reason in problems.items())
        running = self.job is not None and self.job.running
        self.run_button.setEnabled(valid and not running)
        first = next((reason for reason in problems.values() if reason), "")
        self.run_button.setToolTip(first or "Compare the prediction with the ground truth")
        self._show_warnings(self._input_warnings() if valid else [])
        return valid

    # ------------------------------------------------------------------ warnings before numbers
    def _input_warnings(self) -> list[str]:
        """:func:`cellzoo.metrics.sanity.evaluation_warnings` of the chosen inputs (the folders' first pair)."""
        from cellzoo.metrics.sanity import evaluation_warnings

        if self.source.currentText() == "Layers":
            gt, pred = self._layer(self.gt_layer), self._layer(self.pred_layer)
            key = ("layers", gt.name, pred.name, id(gt.data), id(pred.data))
            if key not in self._warning_cache:
                gt_planes, pred_planes = _planes(np.asarray(gt.data)), _planes(np.asarray(pred.data))
                # a stack: the first plane that has objects stands for the others
                index = next((i for i, plane in enumerate(gt_planes) if plane.any()), 0)
                self._warning_cache[key] = evaluation_warnings(gt_planes[index], pred_planes[index])
            return self._warning_cache[key]
        if not self._pairs:
            return []
        first = self._pairs[0]
        key = ("folders", str(first.gt), str(first.pred))
        if key not in self._warning_cache:
            from cellzoo.data.io import read_labels

            try:
                self._warning_cache[key] = evaluation_warnings(read_labels(first.gt), read_labels(first.pred),
                                                                 name=first.name)
            except (OSError, ValueError) as exc:  # the run reports unreadable files with their names
                self._warning_cache[key] = [f"{first.name}: {exc}"]
        return self._warning_cache[key]

    def _show_warnings(self, warnings: list[str]) -> None:
        self.warning_label.setText("\n".join(f"⚠ {text[0].upper()}{text[1:]}" for text in warnings))
        self.warning_label.setVisible(bool(warnings))
        self.warnings = list(warnings)

    # ------------------------------------------------------------------ inputs for the engine
    def _class_names(self) -> list[str] | None:
        text = self.class_names.text().strip()
        if text:
            return ["background", *[n.strip() for n in text.split(",") if n.strip()]]
        for combo in (self.gt_class_layer, self.gt_layer, self.pred_class_layer, self.pred_layer):
            layer = self._layer(combo)
            info = (layer.metadata.get("cellzoo") or {}) if layer is not None else {}
            if info.get("class_names"):
                return list(info["class_names"])
        return None

    def _layer_pairs(self) -> list[tuple]:
        """Copies of the layer data taken on the main thread (layers may change during the run)."""
        gt, pred = self._layer(self.gt_layer), self._layer(self.pred_layer)
        gt_cls, pred_cls = self._layer(self.gt_class_layer), self._layer(self.pred_class_layer)
        gts, preds = _planes(np.array(gt.data)), _planes(np.array(pred.data))
        gt_classes = _planes(np.array(gt_cls.data)) if gt_cls is not None else [None] * len(gts)
        pred_classes = _planes(np.array(pred_cls.data)) if pred_cls is not None else [None] * len(gts)
        several = len(gts) > 1
        names = [f"{gt.name} [{i}]" if several else gt.name for i in range(len(gts))]
        scores = _layer_scores(pred) if not several else None
        if scores:  # the Segment widget's confidences rank detections for COCO AP
            from cellzoo.types import Instances

            preds = [Instances(labels=preds[0], scores=scores)]
        return list(zip(names, gts, preds, gt_classes, pred_classes))

    # ------------------------------------------------------------------ running
    def run(self) -> Job | None:
        if not self.validate():
            return None
        from cellzoo.metrics import evaluate_iter

        class_names = self._class_names()
        if self.source.currentText() == "Layers":
            pairs = self._layer_pairs()
            count = len(pairs)
        else:  # file paths: evaluate_iter reads one image at a time in the worker thread
            pairs = list(self._pairs)
            count = len(pairs)
        notes = " ".join(self._folder_notes) if self.source.currentText() == "Folders" else ""
        self.export_button.setEnabled(False)
        # results on screen always belong to the inputs shown: drop the previous run's
        self.result = None
        self.table.clear()
        self.table.setRowCount(0)
        self.table.setColumnCount(0)
        self.chart.clear()

        def factory(cancel):
            return evaluate_iter(pairs, class_names=class_names, cancel=cancel, total=count)

        self.job = self.jobs.start(factory, description="Evaluation",
                                   status=f"Evaluating {count} image(s)… {notes}".strip(),
                                   on_returned=self.show_result, cancelled_text="Cancelled; no results.",
                                   on_finished=self._finished)
        return self.job

    def cancel(self) -> None:
        self.jobs.cancel()

    def _finished(self, job: Job) -> None:
        self.validate()

    # ------------------------------------------------------------------ results
    def show_result(self, result: Any) -> None:
        self.result = result
        rows = [dict(row) for row in result.per_image]
        summary = dict(result.summary)
        columns: list[str] = []
        for row in [*rows, summary]:
            columns.extend(key for key in row if key not in columns)
        if "image" in columns:
            columns.remove("image")
        columns.insert(0, "image")
        # two summary rows: the mean over images (DSB challenge, HoVer-Net) and the counts pooled over all
        # images first (StarDist, COCO-style papers), each in the columns of its metric
        pooled = {key.removeprefix("pooled_"): summary.pop(key) for key in list(summary) if key.startswith("pooled_")}
        columns = [c for c in columns if not c.startswith("pooled_")]
        table_rows = [*rows, {"image": "mean over images", **{k: v for k, v in summary.items() if k != "image"}}]
        if pooled:
            table_rows.append({"image": "pooled", **pooled})
        self.table.clear()
        self.table.setColumnCount(len(columns))
        self.table.setRowCount(len(table_rows))
        self.table.setHorizontalHeaderLabels(columns)
        for r, row in enumerate(table_rows):
            for c, column in enumerate(columns):
                item = QTableWidgetItem(_format(row.get(column, "")))
                if column != "image":
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if r >= len(rows):
                    font = item.font()
                    font.setBold(True)
                    item.setFont(font)
                self.table.setItem(r, c, item)
        chart = {k: float(v) for k, v in summary.items()
                 if k.lower() in CHART_METRICS and isinstance(v, (int, float, np.floating, np.integer))}
        self.chart.show_values(chart, title=f"mean over {len(rows)} image(s)"
                               + (f" · pooled DSB AP@0.5 {pooled['dsb_ap50']:.3f}" if "dsb_ap50" in pooled else ""))
        self.status.setText(f"Evaluated {len(rows)} image(s).")
        self.export_button.setEnabled(True)

    def export_csv(self, path: str | Path) -> Path:
        """Save per-image rows and the summary as CSV (atomic, through the engine)."""
        if self.result is None:
            raise ValueError("Nothing to export yet; run Evaluate first.")
        path = Path(path)
        if path.suffix.lower() != ".csv":
            path = path.with_name(path.name + ".csv")
        self.result.to_csv(path)
        self.status.setText(f"Saved {path}")
        return path

    def _export_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export metrics", "metrics.csv", "CSV (*.csv)")
        if path:
            try:
                self.export_csv(path)
            except (OSError, ValueError) as exc:
                from cellzoo._napari._worker import notify_error

                notify_error(f"Export failed: {exc}")


def _layer_scores(layer) -> dict[int, float] | None:
    """{instance id: confidence} from a Labels layer's features (Segment widget output), if it has any."""
    features = getattr(layer, "features", None)
    if features is None or not len(features) or not {"label", "score"} <= set(features.columns):
        return None
    scores = {int(label): float(score) for label, score in zip(features["label"], features["score"])
              if np.isfinite(score)}
    return scores or None


def _format(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return "" if np.isnan(value) else f"{value:.4f}"
    return str(value)
