"""Fine-tune widget: adapt a zoo model to the user's own annotated images.

Training data are image + Labels layer pairs open in the viewer (an optional class layer each; only
labels made from or named after that image are offered) and/or training-set folders (written by the
Correct widget, or any ``images/`` + ``labels/`` layout).
The job runs :func:`cellzoo.train.finetune.prepare_finetune_data` (content de-duplication, so an image
given both as a layer pair and in a folder trains once and is never also held out; with fewer than 8 images a
stripe of each is held out) and :func:`~cellzoo.train.finetune.finetune_iter` (the measured recipe; its
defaults are this widget's) in a child process (:mod:`cellzoo._process`: its own GIL, so the GUI never
waits on training), with a live loss / held-out score plot. The base and the tuned
model are scored on the same held-out data. The best state is saved as a *new* user model (zoo models
are never overwritten; the "Save as" field then offers the next free ``<base>-ftN`` name). The guard: a
tuned model that beats its base is selected in the Segment widgets; one that does not is said so in red,
is not selected, and the user keeps it ("Keep anyway") or deletes it ("Discard"). Cancel stops between
steps and keeps the best state evaluated so far (nothing is saved before the first evaluation).
"""
from __future__ import annotations

import html
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtWidgets import (QApplication, QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout,
                            QFrame, QGridLayout, QGroupBox, QHBoxLayout, QLabel, QLineEdit, QListWidget,
                            QListWidgetItem, QPushButton, QSpinBox, QVBoxLayout, QWidget)
from qtpy.QtCore import Qt

from cellzoo._napari._plots import TrainingPlot
from cellzoo._napari._scroll import FittingScrollArea
from cellzoo._napari._job_panel import JobPanel
from cellzoo._napari._worker import (Job, add_broken_models, gui_friendly_torch_threads, job_processes, mark_field,
                                     notify_error, notify_info, unreadable_user_models)
from cellzoo._finetune_job import FinetuneOutcome, finetune_job, load_training_folder  # noqa: F401 (re-exported)
from cellzoo.types import Message, Progress, TrainStep, Validation

#: families the trainer can fine-tune (dense heads); detection families are trained elsewhere
TRAINABLE_FAMILIES = ("repsnet", "fullnet")
#: statuses of models whose weights are here or can be fetched
USABLE_STATUSES = ("embedded", "cached", "user", "downloadable")
AUGMENTATIONS = ("flip", "scale", "elastic", "stain", "blur", "brightness")
#: metric plotted live (the guard itself uses finetune.selection_score: mean of AJI and PQ)
METRIC = "pq"
#: the "Save as" suggestion: <base>-ft1, <base>-ft2, ... (a trailing -ftN of the base is not repeated)
FT_SUFFIX = re.compile(r"-ft\d+$")
GOOD_COLOUR, BAD_COLOUR = "#2ca02c", "#d62728"


def _recipe_defaults():
    from cellzoo.train.finetune import FinetuneRecipe

    return FinetuneRecipe()


def finetune_in_process(base_name: str, layer_samples: list, folders: list[Path], settings: dict[str, Any],
                        new_name: str, cancel):
    """:func:`finetune_job` in a child process (:mod:`cellzoo._process`): training keeps its own GIL, so the
    GUI never waits on it; torch there uses all cores but one, as a job thread here would."""
    from cellzoo._process import process_job

    yield Message("starting the training process")
    threads = str(gui_friendly_torch_threads())
    return (yield from process_job(
        "cellzoo._finetune_job:finetune_job",
        dict(base_name=base_name, layer_samples=layer_samples, folders=folders, settings=settings,
             new_name=new_name), cancel, env={"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}))


def suggest_job(image: np.ndarray, model_name: str | None, n: int, patch: int, device: str, cancel):
    """Generator run in the worker thread: the ranked patches of :func:`cellzoo.annotate.suggest.suggest_iter`
    with the base model (its encoder features and its disagreements), or colour features without one."""
    from cellzoo.annotate.suggest import suggest_iter

    model = None
    if model_name:
        from cellzoo.zoo import load_model

        yield Message(f"loading {model_name}")
        model = load_model(model_name, progress=False)
    return (yield from suggest_iter(image, model, n=n, patch=patch, device=device, cancel=cancel))


def suggestion_shapes(patches) -> tuple[list[np.ndarray], dict[str, list]]:
    """Rectangles (4 corners, row/column) and a feature table for napari's Shapes layer."""
    rectangles = [np.array([[p.y, p.x], [p.y, p.x + p.size], [p.y + p.size, p.x + p.size], [p.y + p.size, p.x]],
                           dtype=float) for p in patches]
    features = {key: [getattr(p, key) for p in patches]
                for key in ("rank", "score", "representativeness", "inconsistency", "nuclear_content", "cluster")}
    return rectangles, features


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

        recipe = _recipe_defaults()
        self.steps = QSpinBox()
        self.steps.setRange(0, 100000)
        self.steps.setSpecialValueText("auto")
        self.steps.setToolTip("Training steps; auto = scaled to the amount of annotated pixels (60-400)")
        self.learning_rate = QLineEdit("auto")
        self.learning_rate.setToolTip("Peak learning rate; auto = from the base's held-out score "
                                      f"({recipe.lr_new_domain:g} where it fails, {recipe.lr_near_domain:g} "
                                      "where it already does well)")
        self.batch_size = QSpinBox()
        self.batch_size.setRange(1, 64)
        self.batch_size.setValue(recipe.batch_size)
        self.val_fraction = QDoubleSpinBox()
        self.val_fraction.setRange(0.05, 0.9)
        self.val_fraction.setSingleStep(0.05)
        self.val_fraction.setValue(0.25)
        self.val_fraction.setToolTip("Share of the images held out to score the model before and after (with 4 or "
                                     "more images; with fewer, the last 25 % of each image is held out)")
        self.crop = QSpinBox()
        self.crop.setRange(32, 2048)
        self.crop.setSingleStep(32)
        self.crop.setValue(recipe.crop)
        self.crop.setToolTip("Edge of the training tiles (px)")
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda", "mps"])
        self.device.setToolTip("auto uses a CUDA GPU (with mixed precision), then Apple MPS, then the CPU")
        self.augment_boxes = {name: QCheckBox(name) for name in AUGMENTATIONS}
        for name, box in self.augment_boxes.items():
            box.setChecked(name in tuple(recipe.augment))
        self.augment_boxes["stain"].setToolTip("H&E stain jitter (RGB brightfield only)")
        self.pseudo = QCheckBox("Also learn from the base's confident predictions on the open images without labels")
        self.pseudo.setToolTip("Pseudo-labels: the base segments every open 2-D image that is not in a ticked pair; "
                               f"its instances scored ≥ {recipe.pseudo_min_score:g} join the training crops "
                               f"({recipe.pseudo_share:.0%} of them); the held-out score still decides")
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
        self.data_note = QLabel("")
        self.data_note.setWordWrap(True)
        # the guard's choice for a tuned model that did not beat its base
        self.keep_button = QPushButton("Keep anyway")
        self.keep_button.setToolTip("Keep the tuned model (not better than its base) in your models")
        self.discard_button = QPushButton("Discard")
        self.discard_button.setToolTip("Delete the tuned model that did not beat its base")
        self.decision = QWidget()
        decision_row = QHBoxLayout(self.decision)
        decision_row.setContentsMargins(0, 0, 0, 0)
        decision_row.addWidget(self.keep_button)
        decision_row.addWidget(self.discard_button)
        self.decision.setVisible(False)
        self._saved_names: set[str] = set()  # models this widget saved (their names are not offered again)

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
        data_box.addWidget(self.data_note)
        data_box.addWidget(self._build_suggest_section())
        settings = QGroupBox("Training")
        form = QFormLayout(settings)
        form.addRow("Steps", self.steps)
        form.addRow("Learning rate", self.learning_rate)
        form.addRow("Batch size", self.batch_size)
        form.addRow("Validation fraction", self.val_fraction)
        form.addRow("Tile size", self.crop)
        form.addRow("Device", self.device)
        grid = QGridLayout()
        for index, box in enumerate(self.augment_boxes.values()):
            grid.addWidget(box, index // 3, index % 3)
        form.addRow("Augmentations", grid)
        form.addRow(self.pseudo)
        top = QFormLayout()
        top.addRow("Base model", model_row)
        bottom = QFormLayout()
        bottom.addRow("Save as", self.new_name)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        # the form is taller than a shared dock: scroll instead of squeezing the rows together
        content = QWidget()
        scroll = FittingScrollArea()  # asks for the content's height: a fair share under Segment
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
        layout.addWidget(self.decision)
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
        self.keep_button.clicked.connect(self.keep_anyway)
        self.discard_button.clicked.connect(self.discard)
        events = self.viewer.layers.events
        for event in (events.inserted, events.removed, events.moved):
            event.connect(self.refresh_pairs)
            event.connect(self.refresh_suggest_images)

        self.refresh_models()
        self.refresh_pairs()

    # ------------------------------------------------------------------ base models
    def refresh_models(self, *_: Any) -> None:
        from cellzoo.zoo import list_models

        current = self.base_model.currentData()
        try:
            listed = list_models()
            infos = [info for info in listed
                     if info.family in TRAINABLE_FAMILIES and info.status in USABLE_STATUSES]
        except (ValueError, OSError) as exc:
            listed, infos = [], []
            self.status.setText(f"The model list could not be read: {exc}")
        self._infos = {info.name: info for info in infos}
        self.base_model.blockSignals(True)
        self.base_model.clear()
        for info in infos:
            self.base_model.addItem(f"{info.name}  [{info.status}]", info.name)
        add_broken_models(self.base_model, unreadable_user_models(info.name for info in listed))
        index = self.base_model.findData(current) if current is not None else -1  # None: a broken entry
        self.base_model.setCurrentIndex(index if index >= 0 else 0)
        self.base_model.blockSignals(False)
        self._base_changed()

    def _base_changed(self, *_: Any) -> None:
        base = self.base_model.currentData()
        text = self.new_name.text().strip()
        # a name the widget suggested, or one a run of it has taken since, moves on to the next free one;
        # a free name the user typed stays
        if base and (not text or text == getattr(self, "_suggested_name", None) or text in self._saved_names):
            self._suggested_name = self._free_name(base)
            self.new_name.setText(self._suggested_name)
        self.validate()

    def _free_name(self, base: str) -> str:
        """The first free ``<base>-ftN`` (N = 1, 2, ...), with a trailing ``-ftN`` of ``base`` dropped."""
        from cellzoo.zoo import user_model_dir

        folder = user_model_dir()
        stem = FT_SUFFIX.sub("", base)
        k = 1
        while f"{stem}-ft{k}" in self._infos or (folder / f"{stem}-ft{k}.safetensors").exists():
            k += 1
        return f"{stem}-ft{k}"

    # ------------------------------------------------------------------ training data
    def _pair_candidates(self) -> list[tuple[str, str, str | None]]:
        """(image, labels, classes|None) for each Labels layer made from or matching an image: the same
        size AND made from it (the layer's cellzoo metadata names the image) or named after it (the
        longest image name its name starts with); a labels layer that names no image (e.g. napari's
        "Labels") pairs only with the one image of its size, if there is exactly one."""
        from napari.layers import Image, Labels

        images = [layer for layer in self.viewer.layers if isinstance(layer, Image)]
        labels = [layer for layer in self.viewer.layers if isinstance(layer, Labels)]
        class_layers = {layer.name for layer in labels
                        if layer.name.endswith(" classes") or "instances_layer" in (layer.metadata.get("cellzoo") or {})}
        image_names = [image.name for image in images]

        def owner(layer) -> str | None:
            source = (layer.metadata.get("cellzoo") or {}).get("image_layer")
            if source in image_names:
                return source
            prefixed = [name for name in image_names if layer.name.startswith(name)]
            return max(prefixed, key=len) if prefixed else None

        out = []
        for image in images:
            shape = _image_spatial_shape(image)
            if len(shape) != 2:
                continue  # stacks: train on 2-D images (save planes to a training-set folder)
            same_size = [other for other in images if _image_spatial_shape(other) == shape]
            for layer in labels:
                if layer.name in class_layers or tuple(layer.data.shape) != shape:
                    continue
                made_from = owner(layer)
                if made_from != image.name and (made_from is not None or len(same_size) != 1):
                    continue
                info = layer.metadata.get("cellzoo") or {}
                candidates = [info.get("classes_layer"), f"{layer.name} classes", f"{image.name} classes"]
                classes = next((c for c in candidates if c and c in class_layers
                                and tuple(self.viewer.layers[c].data.shape) == shape), None)
                out.append((image.name, layer.name, classes))
        return out

    # ------------------------------------------------------------------ suggest what to annotate next
    def _build_suggest_section(self) -> QGroupBox:
        box = QGroupBox("Suggest what to annotate next")
        box.setToolTip("Patches that are typical of the image(s) and where the base model disagrees with "
                       "itself (flipped, rotated, other threshold): correct these first")
        self.suggest_image = QComboBox()
        self.suggest_image.setToolTip("Unlabelled image to rank patches of")
        self.suggest_n = QSpinBox()
        self.suggest_n.setRange(1, 50)
        self.suggest_n.setValue(6)
        self.suggest_n.setToolTip("Number of patches")
        self.suggest_patch = QSpinBox()
        self.suggest_patch.setRange(64, 1024)
        self.suggest_patch.setSingleStep(32)
        self.suggest_patch.setValue(256)
        self.suggest_patch.setToolTip("Patch edge (px)")
        self.suggest_button = QPushButton("Suggest")
        self.suggest_button.setToolTip("Rank patches with the base model and show the best as rectangles")
        self.suggest_status = QLabel("")
        self.suggest_status.setWordWrap(True)
        self.suggest_job: Job | None = None
        self.suggestions: list = []
        # two short rows: one wide row would widen the whole (scrolling, narrow) dock
        self.suggest_image.setMinimumContentsLength(8)
        self.suggest_image.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        first = QHBoxLayout()
        first.addWidget(QLabel("Image"))
        first.addWidget(self.suggest_image, 1)
        second = QHBoxLayout()
        second.addWidget(QLabel("N"))
        second.addWidget(self.suggest_n)
        second.addWidget(QLabel("patch"))
        second.addWidget(self.suggest_patch)
        second.addWidget(self.suggest_button, 1)
        column = QVBoxLayout(box)
        column.addLayout(first)
        column.addLayout(second)
        column.addWidget(self.suggest_status)
        self.suggest_button.clicked.connect(self.suggest)
        self.refresh_suggest_images()
        return box

    def refresh_suggest_images(self, *_: Any) -> None:
        from napari.layers import Image

        current = self.suggest_image.currentText()
        names = [layer.name for layer in self.viewer.layers
                 if isinstance(layer, Image) and len(_image_spatial_shape(layer)) == 2]
        self.suggest_image.blockSignals(True)
        self.suggest_image.clear()
        self.suggest_image.addItems(names)
        if current in names:
            self.suggest_image.setCurrentText(current)
        self.suggest_image.blockSignals(False)
        running = self.suggest_job is not None and self.suggest_job.running
        self.suggest_button.setEnabled(bool(names) and not running)

    def suggest(self) -> Job | None:
        """Rank patches of the chosen image in a background job; the result becomes a Shapes layer."""
        from cellzoo._napari._worker import start_job

        name = self.suggest_image.currentText()
        if not name or name not in self.viewer.layers:
            self.suggest_status.setText("Open an image first.")
            return None
        layer = self.viewer.layers[name]
        data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
        image = np.asarray(data)
        model_name = self.base_model.currentData()
        n, patch, device = self.suggest_n.value(), self.suggest_patch.value(), self.device.currentText()
        self.suggest_button.setEnabled(False)
        self.suggest_status.setText(f"Ranking {patch}² patches of {name} with {model_name or 'colour features'}…")

        returned: list = []  # a progress event delivered after the result must not overwrite its summary

        def progress(event: Any) -> None:
            if isinstance(event, Progress) and event.total and not returned:
                self.suggest_status.setText(f"Ranking patches: {event.done}/{event.total} {event.message}")

        def show(patches: list) -> None:
            returned.append(True)
            self._show_suggestions(layer, patches)

        def finished(_job: Job) -> None:
            self.refresh_suggest_images()

        self.suggest_job = start_job(lambda cancel: suggest_job(image, model_name, n, patch, device, cancel),
                                     description="Suggesting patches", on_event=progress,
                                     on_returned=show,
                                     on_finished=finished)
        return self.suggest_job

    def _show_suggestions(self, image_layer, patches: list) -> None:
        """The ranked patches as a Shapes layer of rectangles labelled 1, 2, … (replacing an earlier one)."""
        self.suggestions = list(patches)
        name = f"{image_layer.name} suggestions"
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        rectangles, features = suggestion_shapes(patches)
        ndim = 2
        layer = self.viewer.add_shapes(
            rectangles, shape_type="rectangle", name=name, features=features, edge_color="#ffd700",
            face_color="transparent", edge_width=max(2, patches[0].size // 64) if patches else 2,
            text={"string": "{rank}", "color": "#ffd700", "anchor": "upper_left", "size": 14},
            scale=tuple(image_layer.scale[-ndim:]), translate=tuple(image_layer.translate[-ndim:]))
        layer.metadata["cellzoo"] = {"suggestions_for": image_layer.name, "model": self.base_model.currentData()}
        best = patches[0] if patches else None
        self.suggest_status.setText(
            f"{len(patches)} patch(es) to correct first, in order (layer '{name}')"
            + (f"; #1 at y {best.y}, x {best.x}: inconsistency {best.inconsistency:.2f}, "
               f"representativeness {best.representativeness:.2f}, nuclei ~{best.nuclear_content:.0%} of it"
               if best else ""))

    def refresh_pairs(self, *_: Any) -> None:
        candidates = self._pair_candidates()
        self.pairs.blockSignals(True)
        self.pairs.clear()
        for key in candidates:
            image, labels, classes = key
            text = f"{image}  +  {labels}" + (f"  +  {classes}" if classes else "")
            item = QListWidgetItem(text)
            item.setData(Qt.ItemDataRole.UserRole, key)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            # ticked by default when it is the image's only candidate (several: the user picks)
            guess = sum(c[0] == image for c in candidates) == 1
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
    def _learning_rate(self) -> float | str | None:
        """A number in (0, 1), "auto" (empty too), or None when the text is neither."""
        text = self.learning_rate.text().strip().lower()
        if text in ("", "auto"):
            return "auto"
        try:
            value = float(text)
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
            "Learning rate must be auto or a number between 0 and 1, e.g. 3e-5.",
            self.new_name: self._name_problem(),
            self.device: self._device_problem(),
            self.pairs: None if n else "Tick an image + labels pair or add a training-set folder.",
        }
        if n == 0:
            self.data_note.setText("")
        elif n < 4:
            which = "one image" if n == 1 else f"{n} images (before duplicates are removed)"
            self.data_note.setText(f"With {which}, a region is held out: the last 25 % (right or bottom stripe) of "
                                   "each image scores the model before and after; the rest trains.")
        else:
            self.data_note.setText(f"{n} images: {self.val_fraction.value():.0%} of them are held out to score the "
                                   "model before and after (duplicates are removed first).")
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
        """The job's settings: FinetuneRecipe overrides for what differs from auto, device, held-out share."""
        augment = [name for name, box in self.augment_boxes.items() if box.isChecked()]
        recipe: dict[str, Any] = {"batch_size": self.batch_size.value(), "crop": self.crop.value(),
                                  "augment": tuple(augment) if augment else "none"}
        if self.steps.value():
            recipe["steps"] = self.steps.value()
        if self._learning_rate() not in (None, "auto"):
            recipe["lr"] = self._learning_rate()
        return {"recipe": recipe, "device": self.device.currentText(), "val_fraction": self.val_fraction.value(),
                "seed": 0}

    def pseudo_image_names(self) -> list[str]:
        """Open 2-D image layers that are in no ticked pair (the unlabelled images pseudo-labels come from)."""
        from napari.layers import Image

        paired = {image for image, _labels, _classes in self.checked_pairs()}
        return [layer.name for layer in self.viewer.layers if isinstance(layer, Image) and layer.name not in paired
                and len(_image_spatial_shape(layer)) == 2]

    def run(self) -> Job | None:
        if not self.validate():
            return None
        base = self.base_model.currentData()
        name = self.new_name.text().strip()
        samples = self._layer_samples()
        folders = self.folder_paths()
        config_values = self.config_values()
        if self.pseudo.isChecked():  # copied here: the layers may change while the job runs
            config_values["pseudo_images"] = [np.array(self.viewer.layers[n].data) for n in self.pseudo_image_names()]
        self.outcome = None
        self.comparison.setText("")
        self.decision.setVisible(False)
        self.plot.reset(f"held-out {METRIC.upper()}")
        self.plot.ax.set_xlabel("step", fontsize=8)
        self._last_step = 0

        def factory(cancel):
            if not job_processes():
                return finetune_job(base, samples, folders, config_values, name, cancel)
            return finetune_in_process(base, samples, folders, config_values, name, cancel)

        started: dict[str, Job] = {}
        self.job = self.jobs.start(
            factory, description="Fine-tuning", status=f"Fine-tuning {base} on {self.n_images()} image(s)…",
            on_event=self._on_event, on_returned=self._on_returned, on_cancelled=self._on_cancelled,
            on_late_returned=lambda outcome: self._on_late_returned(outcome, started.get("job")),
            on_finished=self._finished, cooperative_cancel=True, torch_threads=gui_friendly_torch_threads(),
            oom_advice="use a smaller tile size or batch size, or the CPU device, and run again")
        started["job"] = self.job
        return self.job

    def cancel(self) -> None:
        self.jobs.cancel("Cancelling… (the best finished epoch is kept)")

    def _on_event(self, event: Any) -> None:
        if isinstance(event, TrainStep):
            # finetune_iter: one "epoch" of all the steps; Validation.epoch counts evaluations (0 = the base)
            self.jobs.show_progress(Progress("step", event.step, event.steps_per_epoch))
            self._last_step = event.step
            self.plot.add_loss(event.step, event.losses.get("total", float("nan")))
            self.status.setText(f"Step {event.step}/{event.steps_per_epoch}: "
                                f"loss {event.losses.get('total', float('nan')):.4f}")
        elif isinstance(event, Validation):
            value = event.metrics.get(METRIC)
            step = getattr(self, "_last_step", 0) if event.epoch else 0
            if value is not None:
                self.plot.add_metric(step, value)
            what = "base" if event.epoch == 0 else f"step {step}"
            best = "  (best so far)" if event.best else ""
            self.status.setText(f"Held-out {METRIC.upper()} ({what}): "
                                f"{value if value is not None else float('nan'):.4f}{best}")
        elif isinstance(event, Message):
            self.status.setText(event.text)

    def _on_returned(self, outcome: FinetuneOutcome) -> None:
        self.outcome = outcome
        if outcome.saved_path is None:
            self.status.setText("Cancelled before the first evaluation; no model was saved."
                                if outcome.cancelled else "Training produced no checkpoint; nothing was saved.")
            if outcome.before:
                self.comparison.setText(self.comparison_text(outcome))
            return
        self._saved_names.add(outcome.name)
        stopped = f" (cancelled after {outcome.steps_done} step(s))" if outcome.cancelled else ""
        self.comparison.setText(self.comparison_text(outcome))
        if outcome.improved:
            self.status.setText(f"Saved {outcome.name}{stopped}: best at step {outcome.best_step}, "
                                f"{outcome.saved_path}; selected in Segment.")
            self._announce_new_model(outcome.name, select=True)
        else:
            self.status.setText(f"Saved {outcome.name}{stopped} but NOT selected: it did not beat "
                                f"{outcome.base_name or 'its base'}. Keep it anyway or discard it.")
            self.decision.setVisible(True)
            self._announce_new_model(outcome.name, select=False)

    def keep_anyway(self) -> None:
        """The user keeps a tuned model that did not beat its base (listed, not selected)."""
        if self.outcome is None or self.outcome.saved_path is None:
            return
        self.decision.setVisible(False)
        self.status.setText(f"Kept {self.outcome.name} although it did not beat its base; choose it in the "
                            "Segment widget to use it.")

    def discard(self) -> None:
        """Delete the tuned model that did not beat its base."""
        outcome = self.outcome
        if outcome is None or outcome.saved_path is None:
            return
        Path(outcome.saved_path).unlink(missing_ok=True)
        self._saved_names.discard(outcome.name)
        self.decision.setVisible(False)
        self.status.setText(f"Discarded {outcome.name}; {outcome.base_name or 'the base model'} stays your model.")
        outcome.saved_path = None
        self.refresh_models()
        self._announce_new_model(None)

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
            self._saved_names.add(outcome.name)
            self._announce_new_model(outcome.name, select=outcome.improved)
        if outcome.saved_path is not None:
            notify_info(f"Saved {outcome.name} (best at step {outcome.best_step}) after the cancel.")
        self.refresh_models()

    def _finished(self, job: Job) -> None:
        self.plot.flush()  # live redraws are throttled: show the last points now
        self.refresh_models()
        self.validate()

    @staticmethod
    def comparison_text(outcome: FinetuneOutcome) -> str:
        """Before/after on the same held-out data, the guard's verdict (coloured), and the data notes."""
        where = (f"the held-out stripe of {outcome.n_val} image(s)" if outcome.holdout_region
                 else f"{outcome.n_val} held-out image(s)")
        rows = []
        for key in ("pq", "aji", "dice", "mpq+"):
            if key in outcome.before or key in outcome.after:
                b, a = outcome.before.get(key, float("nan")), outcome.after.get(key, float("nan"))
                rows.append(f"<tr><td>{key.upper()}</td><td align='right'>{b:.3f}</td>"
                            f"<td align='right'>{a:.3f}</td><td align='right'>{a - b:+.3f}</td></tr>")
        base = outcome.base_name or "the base"
        if not outcome.after:
            verdict = ""
        elif outcome.improved:
            verdict = (f"<p style='color:{GOOD_COLOUR}'><b>Better than {base}</b> on {where}: "
                       f"{outcome.name} is selected in Segment.</p>")
        else:
            verdict = (f"<p style='color:{BAD_COLOUR}'><b>Not better than {base}</b> on {where}: "
                       f"{outcome.name} is not selected. Keep it anyway or discard it.</p>")
        notes = "".join(f"<li>{html.escape(note)}</li>" for note in outcome.notes)
        return (verdict + f"<b>On {where}</b><table cellspacing='6'>"
                "<tr><th></th><th>before</th><th>after</th><th>change</th></tr>" + "".join(rows) + "</table>"
                + (f"<ul>{notes}</ul>" if notes else ""))

    def _announce_new_model(self, name: str | None, select: bool = False) -> None:
        """Make every open Segment widget list the new model now, and choose it when ``select``."""
        from cellzoo._napari.segment_widget import SegmentWidget

        for widget in QApplication.allWidgets():
            if isinstance(widget, SegmentWidget):
                widget.refresh_models()
                index = widget.model_combo.findData(name) if name else -1
                if select and index >= 0:
                    widget.model_combo.setCurrentIndex(index)
