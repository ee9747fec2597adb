"""The fine-tuning job behind the Fine-tune widget, Qt-free: it runs in a child process
(:mod:`cellzoo._process`, so training never shares the GUI's GIL) or, in tests, in the widget's thread.

:func:`finetune_job` loads the base, reads the training folders, de-duplicates and holds out
(:func:`cellzoo.train.finetune.prepare_finetune_data`), fine-tunes with the measured recipe
(:func:`~cellzoo.train.finetune.finetune_iter`, its events pass through to the widget), and registers the
best state as a new user model; it returns a :class:`FinetuneOutcome`.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .types import Cancelled, Message, Progress


@dataclass
class FinetuneOutcome:
    """What the job returns to the widget (main thread)."""

    saved_path: Path | None
    name: str
    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)
    best_step: int | None = None
    steps_done: int = 0
    cancelled: bool = False
    n_train: int = 0
    n_val: int = 0
    #: the guard: the tuned model beat the base on the held-out data (finetune_iter's verdict)
    improved: bool = False
    notes: list[str] = field(default_factory=list)
    holdout_region: bool = False
    duplicates_removed: int = 0
    base_name: str = ""


def load_training_folder(folder: Path) -> list:
    """Samples of a training-set folder (Correct widget's manifest format) or any dataset layout."""
    from cellzoo.data.dataset import Dataset

    if (folder / "manifest.json").is_file():
        from cellzoo.annotate.training_set import read_training_set

        return read_training_set(folder)
    return list(Dataset.from_layout(folder))


def finetune_job(base_name: str, layer_samples: list, folders: list[Path], settings: dict[str, Any],
                 new_name: str, cancel):
    """Generator run in the worker thread: load, de-duplicate and hold out, score the base, fine-tune with
    the recipe, save the best state as ``new_name`` (also when it did not beat the base: the widget then
    lets the user keep or discard it). ``settings``: ``recipe`` (FinetuneRecipe overrides), ``device``,
    ``val_fraction``, ``seed``, ``pseudo_images`` (unlabelled images for pseudo-labels)."""
    from cellzoo.train.finetune import INHERITED_METADATA, FinetuneRecipe, finetune_iter, prepare_finetune_data
    from cellzoo.zoo import load_model, register_model
    from cellzoo.zoo.weights import load_weights, read_metadata

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
    data = prepare_finetune_data(samples, None, val_fraction=float(settings.get("val_fraction", 0.25)),
                                 seed=int(settings.get("seed", 0)))
    recipe = FinetuneRecipe.for_data(data.train, **dict(settings.get("recipe") or {}))
    outcome = FinetuneOutcome(None, new_name, n_train=len(data.train), n_val=len(data.val), notes=list(data.notes),
                              holdout_region=data.holdout_region, duplicates_removed=data.duplicates_removed,
                              base_name=base_name)
    out_dir = Path(tempfile.mkdtemp(prefix="cellzoo-finetune-"))
    try:
        try:
            result = yield from finetune_iter(model, data, recipe, device=settings.get("device", "auto"),
                                              cancel=cancel, out_dir=out_dir, base_name=base_name,
                                              pseudo_images=settings.get("pseudo_images") or None)
        except Cancelled:  # cancelled while scoring: nothing evaluated is kept
            outcome.cancelled = True
            return outcome
        best = [record for record in result.history if record.get("best")]
        outcome.before, outcome.after, outcome.improved = dict(result.before), dict(result.after), result.improved
        outcome.notes, outcome.cancelled, outcome.steps_done = list(result.notes), result.cancelled, result.steps
        outcome.best_step = int(best[-1]["step"]) if best else None
        if result.best_path is None or not Path(result.best_path).is_file():
            return outcome  # cancelled before the first evaluation: nothing to keep
        tuned, _ = load_weights(result.best_path)
        tuned_meta = read_metadata(result.best_path)
        # how to run it (scale "auto" aims at the corrected nuclei's size) comes from the tuned file
        metadata = {k: base_meta[k] for k in ("notes",) if k in base_meta}
        metadata.update({k: tuned_meta[k] for k in INHERITED_METADATA if k in tuned_meta})
        names = [s.name for s in data.train]
        metadata.update({
            "family": model.family,
            "licence": f"derived from {base_name}: {base_meta.get('licence', 'see the base model')}",
            "training_data": f"fine-tuned from {base_name} on {len(data.train)} image(s) ({', '.join(names[:5])}"
                             + (", …" if len(names) > 5 else "") + ")",
            "metrics": {"heldout_before": outcome.before, "heldout_after": outcome.after,
                        "heldout_images": len(data.val), "best_step": outcome.best_step},
            "source": f"napari-cellzoo fine-tune of {base_name}",
            "finetune": tuned_meta.get("finetune", {"improved": outcome.improved}),
            "training": {"recipe": recipe.to_dict(), "cancelled": outcome.cancelled,
                         "steps_done": outcome.steps_done},
        })
        outcome.saved_path = register_model(tuned, new_name, metadata)
        return outcome
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
