"""Fine-tune widget: adapt a zoo model to the user's own annotated images.

Training data are image + Labels layer pairs open in the viewer (an optional class layer each) and/or
training-set folders (written by the Correct widget, or any ``images/`` + ``labels/`` layout).
The job runs :func:`cellzoo.train.train_iter` in a thread with a live loss / validation plot; the best
checkpoint is saved as a *new* user model (zoo models are never overwritten) that the Segment widget
lists at once, and the validation metric before and after fine-tuning is shown. Cancel stops between
steps and keeps the best checkpoint of the finished epochs (nothing is saved before the first one).
"""
from __future__ import annotations

import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtWidgets import (QApplication, QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout,
                            QFrame, QGridLayout, QGroupBox, QHBoxLayout, QLabel, QLineEdit, QListWidget,
                            QListWidgetItem, QPushButton, QScrollArea, QSpinBox, QVBoxLayout, QWidget)
from qtpy.QtCore import Qt

from cellzoo._napari._plots import TrainingPlot
from cellzoo._napari._job_panel import JobPanel
from cellzoo._napari._worker import Job, mark_field, notify_error, notify_info
from cellzoo.types import Cancelled, Message, Progress, TrainStep, Validation

#: families the trainer can fine-tune (dense heads); detection families are trained elsewhere
TRAINABLE_FAMILIES = ("repsnet", "fullnet")
#: statuses of models whose weights are here or can be fetched
USABLE_STATUSES = ("embedded", "cached", "user", "downloadable")
AUGMENTATIONS = ("flip", "scale", "elastic", "stain", "blur", "brightness")
DEFAULT_AUGMENT = ("flip", "scale", "elastic", "blur", "brightness")
#: metric that selects the best checkpoint (as in cellzoo.train) and is shown before/after
METRIC = "pq"


@dataclass
class FinetuneOutcome:
    """What the job returns to the widget (main thread)."""

    saved_path: Path | None
    name: str
    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)
    best_epoch: int | None = None
    epochs_done: int = 0
    cancelled: bool = False
    n_train: int = 0
    n_val: int = 0


def load_training_folder(folder: Path) -> list:
    """Samples of a training-set folder (Correct widget's manifest format) or any dataset layout."""
    from cellzoo.data.dataset import Dataset

    if (folder / "manifest.json").is_file():
        from cellzoo.annotate.training_set import read_training_set

        return read_training_set(folder)
    return list(Dataset.from_layout(folder))


def finetune_job(base_name: str, layer_samples: list, folders: list[Path], config_values: dict[str, Any],
                 new_name: str, cancel):
    """Generator run in the worker thread: load, measure before, train, save the best as ``new_name``."""
    from cellzoo.train import TrainConfig, split_samples, train_iter, validation_metrics
    from cellzoo.zoo import load_model, register_model
    from cellzoo.zoo.weights import load_weights

    yield Message(f"loading {base_name}")
    model = load_model(base_name, progress=False)
    base_meta = dict(getattr(model, "metadata", {}) or {})
    samples = list(layer_samples)
    for index, folder in enumerate(folders):
        cancel.raise_if_cancelled()
        yield Progress("reading training folders", index, len(folders), folder.name)
        samples.extend(load_training_folder(folder))
    if not samples:
        raise ValueError("no training images: check image/label pairs or add a training-set folder")
    config = TrainConfig(**config_values)
    train_samples, val_samples = split_samples(samples, config.val_fraction, config.seed)
    if config.max_val_images is not None:
        val_samples = val_samples[: config.max_val_images]
    before: dict[str, float] = {}
    if val_samples:
        yield Message(f"measuring {base_name} on {len(val_samples)} validation image(s)")
        from cellzoo.infer.device import select_device

        before = yield from validation_metrics(model, val_samples, device=select_device(config.device)[0],
                                               tile=config.val_tile, cancel=cancel)
    out_dir = Path(tempfile.mkdtemp(prefix="cellzoo-finetune-"))
    config.out_dir = str(out_dir)
    history: list[dict[str, Any]] = []
    cancelled = False
    try:
        try:
            result = yield from train_iter(model, train_samples, val_samples, config, cancel)
            history, cancelled = result.history, result.cancelled
        except Cancelled:  # cancelled during validation: the epochs before it still count
            cancelled = True
            history_file = out_dir / "history.json"
            if history_file.is_file():
                import json

                history = json.loads(history_file.read_text())
        best_file = out_dir / "best.safetensors"
        best = [record for record in history if record.get("best")]
        outcome = FinetuneOutcome(None, new_name, before, {}, None, len(history), cancelled,
                                  len(train_samples), len(val_samples))
        if not best or not best_file.is_file():
            return outcome  # cancelled before the first epoch finished: nothing to keep
        best_model, _ = load_weights(best_file)
        outcome.after = dict(best[-1].get("metrics") or {})
        outcome.best_epoch = int(best[-1]["epoch"])
        keep = ("class_names", "class_colors", "normalization", "pixel_size_um", "notes")
        metadata = {k: base_meta[k] for k in keep if k in base_meta}
        metadata.update({
            "family": model.family,
            "licence": f"derived from {base_name}: {base_meta.get('licence', 'see the base model')}",
            "training_data": (f"fine-tuned from {base_name} on {len(train_samples)} image(s)"
                              + (f" ({', '.join(config.data_name.split(';'))})" if config.data_name else "")),
            "metrics": {"validation_before": before, "validation_after": outcome.after,
                        "validation_images": len(val_samples), "best_epoch": outcome.best_epoch},
            "source": f"napari-cellzoo fine-tune of {base_name}",
            "training": {"config": {k: v for k, v in config.to_dict().items() if k != "out_dir"},
                         "cancelled": cancelled, "epochs_done": len(history)},
        })
        outcome.saved_path = register_model(best_model, new_name, metadata)
        return outcome
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def _image_spatial_shape(layer) -> tuple[int, ...]:
    shape = tuple(layer.data.shape)
    return shape[:-1] if getattr(layer, "rgb", False) else shape


class FinetuneWidget(QWidget):
    """Base model, training data, hyper-parameters, live plot, before/after metric."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.job: Job | None = None
        self.outcome: FinetuneOutcome | None = None
        self._infos: dict[str, Any] = {}
        self._folder_counts: dict[str, int] = {}
        self._user_checks: dict[tuple, Any] = {}  # pair -> check state the user chose

        self.base_model = QComboBox()
        self.base_model.setToolTip("Model to start from (dense families: RepSNet, FullNet)")
        self.refresh_models_button = QPushButton("↻")
        self.refresh_models_button.setFixedWidth(28)
        self.refresh_models_button.setToolTip("Re-read the model list")

        self.pairs = QListWidget()
        self.pairs.setToolTip("Image + Labels layers of the same size; tick the ones to train on")
        self.pairs.setMaximumHeight(110)
        self.folders = QListWidget()
        self.folders.setToolTip("Training-set folders (Correct widget) or images/ + labels/ folders")
        self.folders.setMaximumHeight(80)
        self.add_folder_button = QPushButton("Add folder…")
        self.remove_folder_button = QPushButton("Remove")

        self.epochs = QSpinBox()
        self.epochs.setRange(1, 1000)
        self.epochs.setValue(10)
        self.steps = QSpinBox()
        self.steps.setRange(0, 100000)
        self.steps.setSpecialValueText("auto")
        self.steps.setToolTip("Steps per epoch; auto = one pass over the training images")
        self.learning_rate = QLineEdit("1e-4")
        self.learning_rate.setToolTip("Learning rate (fine-tuning uses a smaller one than training)")
        self.batch_size = QSpinBox()
        self.batch_size.setRange(1, 64)
        self.batch_size.setValue(4)
        self.val_fraction = QDoubleSpinBox()
        self.val_fraction.setRange(0.0, 0.9)
        self.val_fraction.setSingleStep(0.05)
        self.val_fraction.setValue(0.2)
        self.val_fraction.setToolTip("Share of the images held out to measure the model before and after")
        self.crop = QSpinBox()
        self.crop.setRange(32, 2048)
        self.crop.setSingleStep(32)
        self.crop.setValue(256)
        self.crop.setToolTip("Edge of the training tiles (px)")
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda", "mps"])
        self.device.setToolTip("auto uses a CUDA GPU (with mixed precision), then Apple MPS, then the CPU")
        self.augment_boxes = {name: QCheckBox(name) for name in AUGMENTATIONS}
        for name, box in self.augment_boxes.items():
            box.setChecked(name in DEFAULT_AUGMENT)
        self.augment_boxes["stain"].setToolTip("H&E stain jitter (RGB brightfield only)")
        self.new_name = QLineEdit()
        self.new_name.setPlaceholderText("name of the new model")

        self.run_button = QPushButton("Fine-tune")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.jobs = JobPanel(self.run_button, self.cancel_button, self.status)
        self.plot = TrainingPlot(metric_name=f"validation {METRIC.upper()}")
        self.plot.setMaximumHeight(200)
        self.comparison = QLabel("")
        self.comparison.setWordWrap(True)
        self.comparison.setTextFormat(Qt.TextFormat.RichText)

        # -- layout
        model_row = QHBoxLayout()
        model_row.addWidget(self.base_model, 1)
        model_row.addWidget(self.refresh_models_button)
        data = QGroupBox("Training data")
        data_box = QVBoxLayout(data)
        data_box.addWidget(QLabel("Image / label layer pairs"))
        data_box.addWidget(self.pairs)
        data_box.addWidget(QLabel("Training-set folders"))
        data_box.addWidget(self.folders)
        folder_buttons = QHBoxLayout()
        folder_buttons.addWidget(self.add_folder_button)
        folder_buttons.addWidget(self.remove_folder_button)
        data_box.addLayout(folder_buttons)
        settings = QGroupBox("Training")
        form = QFormLayout(settings)
        form.addRow("Epochs", self.epochs)
        form.addRow("Steps / epoch", self.steps)
        form.addRow("Learning rate", self.learning_rate)
        form.addRow("Batch size", self.batch_size)
        form.addRow("Validation fraction", self.val_fraction)
        form.addRow("Tile size", self.crop)
        form.addRow("Device", self.device)
        grid = QGridLayout()
        for index, box in enumerate(self.augment_boxes.values()):
            grid.addWidget(box, index // 3, index % 3)
        form.addRow("Augmentations", grid)
        top = QFormLayout()
        top.addRow("Base model", model_row)
        bottom = QFormLayout()
        bottom.addRow("Save as", self.new_name)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        # the form is taller than a shared dock: scroll instead of squeezing the rows together
        content = QWidget()
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setWidget(content)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)
        layout = QVBoxLayout(content)
        layout.addLayout(top)
        layout.addWidget(data)
        layout.addWidget(settings)
        layout.addLayout(bottom)
        layout.addLayout(buttons)
        layout.addWidget(self.jobs.progress_bar)
        layout.addWidget(self.status)
        layout.addWidget(self.plot)
        layout.addWidget(self.comparison)
        layout.addStretch(1)

        # -- signals
        self.base_model.currentIndexChanged.connect(self._base_changed)
        self.refresh_models_button.clicked.connect(self.refresh_models)
        self.pairs.itemChanged.connect(self._pair_toggled)
        self.add_folder_button.clicked.connect(self._add_folder_dialog)
        self.remove_folder_button.clicked.connect(self._remove_selected_folders)
        self.learning_rate.textChanged.connect(self.validate)
        self.new_name.textChanged.connect(self.validate)
        self.val_fraction.valueChanged.connect(self.validate)
        self.device.currentIndexChanged.connect(self.validate)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        events = self.viewer.layers.events
        for event in (events.inserted, events.removed, events.moved):
            event.connect(self.refresh_pairs)

        self.refresh_models()
        self.refresh_pairs()

    # ------------------------------------------------------------------ base models
    def refresh_models(self, *_: Any) -> None:
        from cellzoo.zoo import list_models

        current = self.base_model.currentData()
        try:
            infos = [info for info in list_models()
                     if info.family in TRAINABLE_FAMILIES and info.status in USABLE_STATUSES]
        except (ValueError, OSError) as exc:
            infos = []
            self.status.setText(f"The model list could not be read: {exc}")
        self._infos = {info.name: info for info in infos}
        self.base_model.blockSignals(True)
        self.base_model.clear()
        for info in infos:
            self.base_model.addItem(f"{info.name}  [{info.status}]", info.name)
        index = self.base_model.findData(current)
        self.base_model.setCurrentIndex(index if index >= 0 else 0)
        self.base_model.blockSignals(False)
        self._base_changed()

    def _base_changed(self, *_: Any) -> None:
        base = self.base_model.currentData()
        if base and (not self.new_name.text().strip() or self.new_name.text().endswith("-finetuned")):
            self.new_name.setText(self._free_name(f"{base}-finetuned"))
        self.validate()

    def _free_name(self, stem: str) -> str:
        from cellzoo.zoo import user_model_dir

        folder = user_model_dir()
        name, k = stem, 2
        while name in self._infos or (folder / f"{name}.safetensors").exists():
            name, k = f"{stem}-{k}", k + 1
        return name

    # ------------------------------------------------------------------ training data
    def _pair_candidates(self) -> list[tuple[str, str, str | None]]:
        """(image, labels, classes|None) for every Labels layer that matches an image's size."""
        from napari.layers import Image, Labels

        images = [layer for layer in self.viewer.layers if isinstance(layer, Image)]
        labels = [layer for layer in self.viewer.layers if isinstance(layer, Labels)]
        class_layers = {layer.name for layer in labels
                        if layer.name.endswith(" classes") or "instances_layer" in (layer.metadata.get("cellzoo") or {})}
        out = []
        for image in images:
            shape = _image_spatial_shape(image)
            if len(shape) != 2:
                continue  # stacks: train on 2-D images (save planes to a training-set folder)
            for layer in labels:
                if layer.name in class_layers or tuple(layer.data.shape) != shape:
                    continue
                info = layer.metadata.get("cellzoo") or {}
                candidates = [info.get("classes_layer"), f"{layer.name} classes", f"{image.name} classes"]
                classes = next((c for c in candidates if c and c in class_layers
                                and tuple(self.viewer.layers[c].data.shape) == shape), None)
                out.append((image.name, layer.name, classes))
        return out

    def refresh_pairs(self, *_: Any) -> None:
        candidates = self._pair_candidates()
        images = {image for image, _l, _c in candidates}
        self.pairs.blockSignals(True)
        self.pairs.clear()
        for key in candidates:
            image, labels, classes = key
            text = f"{image}  +  {labels}" + (f"  +  {classes}" if classes else "")
            item = QListWidgetItem(text)
            item.setData(Qt.ItemDataRole.UserRole, key)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            # ticked by default: labels named after this image ("<image> labels", "<image> instances"),
            # or the only candidate of an image when the labels are not named after another image
            named_after = [other for other in images if labels.startswith(other)]
            mine = [c for c in candidates if c[0] == image]
            guess = (max(named_after, key=len) == image) if named_after else len(mine) == 1
            state = self._user_checks.get(key, Qt.CheckState.Checked if guess else Qt.CheckState.Unchecked)
            item.setCheckState(state)
            self.pairs.addItem(item)
        self.pairs.blockSignals(False)
        self.validate()

    def _pair_toggled(self, item: QListWidgetItem) -> None:
        self._user_checks[item.data(Qt.ItemDataRole.UserRole)] = item.checkState()
        self.validate()

    def checked_pairs(self) -> list[tuple[str, str, str | None]]:
        return [self.pairs.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.pairs.count())
                if self.pairs.item(i).checkState() == Qt.CheckState.Checked]

    def add_folder(self, folder: str | Path) -> bool:
        """Add a training-set folder after checking it can be read; False (with a notification) if not."""
        folder = Path(folder).expanduser()
        try:
            if not folder.is_dir():
                raise FileNotFoundError(f"{folder} is not an existing folder.")
            count = len(load_training_folder(folder))
            if count == 0:
                raise ValueError(f"{folder} holds no annotated images.")
        except (ValueError, FileNotFoundError, OSError) as exc:
            notify_error(f"Cannot use {folder.name} for training: {exc}")
            return False
        self._folder_counts[str(folder)] = count
        if not self.folders.findItems(str(folder), Qt.MatchFlag.MatchExactly):
            item = QListWidgetItem(str(folder))
            item.setToolTip(f"{count} annotated image(s)")
            self.folders.addItem(item)
        self.validate()
        return True

    def _add_folder_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Training-set folder")
        if folder:
            self.add_folder(folder)

    def _remove_selected_folders(self) -> None:
        for item in self.folders.selectedItems():
            self._folder_counts.pop(item.text(), None)
            self.folders.takeItem(self.folders.row(item))
        self.validate()

    def folder_paths(self) -> list[Path]:
        return [Path(self.folders.item(i).text()) for i in range(self.folders.count())]

    # ------------------------------------------------------------------ validation
    def _learning_rate(self) -> float | None:
        try:
            value = float(self.learning_rate.text().strip())
        except ValueError:
            return None
        return value if math.isfinite(value) and 0 < value < 1 else None

    def _name_problem(self) -> str | None:
        from cellzoo.zoo import user_model_dir
        from cellzoo.zoo.registry import NAME_PATTERN, load_registry

        name = self.new_name.text().strip()
        if not name:
            return "Give the new model a name."
        if not NAME_PATTERN.match(name):
            return "Use 1-80 letters, digits, '.', '_' or '-', starting with a letter or digit."
        if name in load_registry():
            return f"{name!r} is a zoo model and is never overwritten; choose a new name."
        if (user_model_dir() / f"{name}.safetensors").exists():
            return f"You already have a model called {name!r}; choose a new name (or delete the old one)."
        return None

    def _device_problem(self) -> str | None:
        from cellzoo.infer.device import select_device

        try:
            select_device(self.device.currentText())
        except ValueError as exc:
            return str(exc).replace("use --device cpu or auto", "choose cpu or auto")
        return None

    def n_images(self) -> int:
        return len(self.checked_pairs()) + sum(self._folder_counts.get(str(p), 0) for p in self.folder_paths())

    def validate(self, *_: Any) -> bool:
        n = self.n_images()
        problems = {
            self.base_model: None if self.base_model.currentData() else
            "No trainable model (RepSNet/FullNet) is available; fetch or import one first.",
            self.learning_rate: None if self._learning_rate() is not None else
            "Learning rate must be a number between 0 and 1, e.g. 1e-4.",
            self.new_name: self._name_problem(),
            self.device: self._device_problem(),
            self.pairs: None if n else "Tick an image + labels pair or add a training-set folder.",
            self.val_fraction: None if self.val_fraction.value() == 0 or n >= 2 else
            "Validation needs at least 2 images (one to train on); add data or set it to 0.",
        }
        valid = all(mark_field(widget, reason) is True for widget, reason in problems.items())
        running = self.job is not None and self.job.running
        self.run_button.setEnabled(valid and not running)
        self.run_button.setToolTip(next((r for r in problems.values() if r), "") or
                                   f"Fine-tune on {n} image(s)")
        return valid

    # ------------------------------------------------------------------ running
    def _layer_samples(self) -> list:
        """Samples copied from the ticked layers on the main thread (layers may be edited meanwhile)."""
        from cellzoo.data.io import labels_as_int32
        from cellzoo.data.sample import Sample

        samples = []
        for image_name, labels_name, classes_name in self.checked_pairs():
            image = np.array(self.viewer.layers[image_name].data)
            labels = labels_as_int32(np.array(self.viewer.layers[labels_name].data), source=labels_name)
            classes = (np.array(self.viewer.layers[classes_name].data, dtype=np.uint8)
                       if classes_name else None)
            samples.append(Sample(f"{image_name}", image, labels, classes, meta={"labels_layer": labels_name}))
        return samples

    def config_values(self) -> dict[str, Any]:
        augment = [name for name, box in self.augment_boxes.items() if box.isChecked()]
        return {"epochs": self.epochs.value(), "steps_per_epoch": self.steps.value() or None,
                "batch_size": self.batch_size.value(), "lr": self._learning_rate(),
                "val_fraction": self.val_fraction.value(), "crop": self.crop.value(),
                "augment": augment or "none", "scheduler": "none", "device": self.device.currentText(),
                "data_name": ";".join([*(p for _, p, _ in self.checked_pairs()),
                                       *(f.name for f in self.folder_paths())])[:500]}

    def run(self) -> Job | None:
        if not self.validate():
            return None
        base = self.base_model.currentData()
        name = self.new_name.text().strip()
        samples = self._layer_samples()
        folders = self.folder_paths()
        config_values = self.config_values()
        self.outcome = None
        self.comparison.setText("")
        self.plot.reset(f"validation {METRIC.upper()}")

        def factory(cancel):
            return finetune_job(base, samples, folders, config_values, name, cancel)

        started: dict[str, Job] = {}
        self.job = self.jobs.start(
            factory, description="Fine-tuning", status=f"Fine-tuning {base} on {self.n_images()} image(s)…",
            on_event=self._on_event, on_returned=self._on_returned, on_cancelled=self._on_cancelled,
            on_late_returned=lambda outcome: self._on_late_returned(outcome, started.get("job")),
            on_finished=self._finished, cooperative_cancel=True,
            oom_advice="use a smaller tile size or batch size, or the CPU device, and run again")
        started["job"] = self.job
        return self.job

    def cancel(self) -> None:
        self.jobs.cancel("Cancelling… (the best finished epoch is kept)")

    def _on_event(self, event: Any) -> None:
        if isinstance(event, TrainStep):
            self.jobs.show_progress(Progress(f"epoch {event.epoch}, step", event.step, event.steps_per_epoch))
            position = event.epoch - 1 + event.step / max(event.steps_per_epoch, 1)
            self.plot.add_loss(position, event.losses.get("total", float("nan")))
            self.status.setText(f"Epoch {event.epoch}, step {event.step}/{event.steps_per_epoch}: "
                                f"loss {event.losses.get('total', float('nan')):.4f}")
        elif isinstance(event, Validation):
            value = event.metrics.get(METRIC)
            if value is not None:
                self.plot.add_metric(event.epoch, value)
            best = "  (best so far)" if event.best else ""
            self.status.setText(f"Epoch {event.epoch}: validation {METRIC.upper()} "
                                f"{value if value is not None else float('nan'):.4f}{best}")
        elif isinstance(event, Message):
            self.status.setText(event.text)

    def _on_returned(self, outcome: FinetuneOutcome) -> None:
        self.outcome = outcome
        if outcome.saved_path is None:
            self.status.setText("Cancelled before the first epoch finished; no model was saved."
                                if outcome.cancelled else "Training produced no checkpoint; nothing was saved.")
            return
        stopped = f" (cancelled after {outcome.epochs_done} epoch(s))" if outcome.cancelled else ""
        self.status.setText(f"Saved {outcome.name}{stopped}: best epoch {outcome.best_epoch}, "
                            f"{outcome.saved_path}")
        self.comparison.setText(self.comparison_text(outcome))
        self._announce_new_model(outcome.name)

    def _on_cancelled(self) -> None:
        job = self.jobs.job
        if job is not None and job.running and not job.thread_done:
            # the widget is ready again; the thread still ends its step and saves the best epoch, if any
            self.status.setText("Cancelled; finishing the current step, then the best finished epoch (if any) "
                                "is saved.")
        else:
            self.status.setText("Cancelled; no model was saved.")

    def _on_late_returned(self, outcome: FinetuneOutcome, job: Job | None) -> None:
        """The result of a job that was cancelled and let go while it still ran its last step."""
        if job is not None and job is self.jobs.job:
            self._on_returned(outcome)  # no newer run on screen: show it as the outcome
        elif outcome.saved_path is not None:
            self._announce_new_model(outcome.name)
        if outcome.saved_path is not None:
            notify_info(f"Saved {outcome.name} (best epoch {outcome.best_epoch}) after the cancel.")
        self.refresh_models()

    def _finished(self, job: Job) -> None:
        self.refresh_models()
        self.validate()

    @staticmethod
    def comparison_text(outcome: FinetuneOutcome) -> str:
        if not outcome.n_val:
            return "No validation images (validation fraction 0), so no before/after comparison."
        rows = []
        for key in ("pq", "aji", "dice", "mpq+"):
            if key in outcome.before or key in outcome.after:
                b, a = outcome.before.get(key, float("nan")), outcome.after.get(key, float("nan"))
                rows.append(f"<tr><td>{key.upper()}</td><td align='right'>{b:.3f}</td>"
                            f"<td align='right'>{a:.3f}</td><td align='right'>{a - b:+.3f}</td></tr>")
        return (f"<b>On {outcome.n_val} validation image(s)</b><table cellspacing='6'>"
                "<tr><th></th><th>before</th><th>after</th><th>change</th></tr>" + "".join(rows) + "</table>")

    def _announce_new_model(self, name: str) -> None:
        """Make every open Segment widget list the new model now."""
        from cellzoo._napari.segment_widget import SegmentWidget

        for widget in QApplication.allWidgets():
            if isinstance(widget, SegmentWidget):
                widget.refresh_models()
