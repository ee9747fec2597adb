"""`cellzoo train --family repsnet|fullnet --data PATH_OR_SHARED_NAME --out DIR [...]` with a progress bar.

With ``--base MODEL`` the run is a fine-tune (:mod:`cellzoo.train.finetune`): the measured recipe, the base
scored first on held-out data that never overlaps training, and a plain verdict when the tuned model does not
beat the base."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .._names import DEVICE_CHOICES

TRAINABLE = ("repsnet", "fullnet")


def add_arguments(parser):
    parser.add_argument("--family", choices=TRAINABLE, default=None,
                        help="model family to train from scratch (or the family of --base)")
    parser.add_argument("--data", required=True,
                        help="dataset folder (images/ + labels/ [+ classes/], .npy, COCO, class folders) or a "
                             "shared dataset name: monuseg2018, consep, dsb2018")
    parser.add_argument("--val-data", default=None, help="validation dataset (default: a split of --data)")
    parser.add_argument("--out", required=True, help="output folder for best/last checkpoints and history.json")
    parser.add_argument("--base", default=None, help="fine-tune this model (zoo name or file) instead of a new one")
    parser.add_argument("--model-config", default=None,
                        help='JSON of model options, e.g. \'{"filters": [16, 32, 64, 128]}\'')
    parser.add_argument("--config", default=None, help="JSON file or string of TrainConfig options")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--steps-per-epoch", type=int, default=None)
    parser.add_argument("--crop", type=int, default=None, help="training tile edge in pixels")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--augment", default=None,
                        help="comma-separated augmentations (flip,scale,elastic,stain,blur,brightness), "
                             "'default', 'fluorescence' or 'none'")
    parser.add_argument("--oversample-rare", action="store_true", default=None,
                        help="draw patches rich in rare classes more often")
    parser.add_argument("--val-fraction", type=float, default=None)
    parser.add_argument("--max-val-images", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--device", default=None, choices=DEVICE_CHOICES)
    parser.add_argument("--resume", action="store_true", default=None, help="continue from OUT/last_state.pt")
    parser.add_argument("--steps", type=int, default=None,
                        help="with --base: training steps (default: scaled to the amount of data)")
    parser.add_argument("--pseudo-data", default=None,
                        help="with --base: folder of unlabelled images whose confident predictions join the "
                             "training data (pseudo-labels)")
    parser.add_argument("--synthesis", type=float, default=None, metavar="SHARE",
                        help="with --base: share of training crops (0-1) that get corrected nuclei pasted into "
                             "their empty places (default 0: off; see benchmarks/results/finetune.md)")
    parser.add_argument("--workers", dest="num_workers", type=int, default=None,
                        help="processes that make the training batches ahead of the model (0: in the main "
                             "process); a GPU run wants several")


def _json_option(text: str | None, what: str) -> dict:
    if not text:
        return {}
    path = Path(text).expanduser()
    try:
        value = json.loads(path.read_text() if path.is_file() else text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} is neither a JSON file nor valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def load_training_data(spec: str, split: str = "train"):
    """A shared dataset name or a folder in any layout ``cellzoo.data.Dataset.from_layout`` knows."""
    from ..data import SHARED_DATASETS, Dataset, load_shared_dataset

    if spec in SHARED_DATASETS:
        return load_shared_dataset(spec, split)
    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"training data {spec!r} is neither a folder nor a shared dataset "
                                f"({', '.join(SHARED_DATASETS)})")
    return Dataset.from_layout(path)


def build_training_model(family: str | None, base: str | None, model_config: dict, class_names: list[str]):
    from ..infer.engine import resolve_model
    from ..models import build_model

    if base:
        model = resolve_model(base)
        if family and model.family != family:
            raise ValueError(f"--base {base} is a {model.family} model but --family {family} was given")
        if model_config:
            raise ValueError("--model-config cannot change a --base model; drop one of the two")
        if len(class_names) > 2 and model.num_classes != len(class_names):
            raise ValueError(f"the data has {len(class_names) - 1} classes but --base {base} predicts "
                             f"{model.num_classes - 1}; train a new model with --family instead")
        return model
    if not family:
        raise ValueError("give --family repsnet|fullnet (or --base MODEL to fine-tune)")
    config = dict(model_config)
    if len(class_names) > 2:
        config.setdefault("num_classes", len(class_names))
        config.setdefault("class_names", list(class_names))
    return build_model(family, config)


def run(args) -> int:
    if args.base:
        return run_finetune(args)
    for flag, key in (("--steps", "steps"), ("--pseudo-data", "pseudo_data"), ("--synthesis", "synthesis")):
        if getattr(args, key) is not None:
            raise ValueError(f"{flag} is a fine-tuning option: use it with --base MODEL")
    from tqdm import tqdm

    from ..train import TrainConfig, train_iter
    from ..types import Message, Progress, TrainStep, Validation

    options = _json_option(args.config, "--config")
    for key in ("epochs", "steps_per_epoch", "crop", "batch_size", "lr", "augment", "oversample_rare",
                "val_fraction", "max_val_images", "seed", "device", "resume", "num_workers"):
        value = getattr(args, key)
        if value is not None:
            options[key] = value
    options["out_dir"] = args.out
    options.setdefault("data_name", args.data)
    config = TrainConfig.from_dict(options)

    data = load_training_data(args.data)
    if args.val_data:
        train_samples, val_samples = data, load_training_data(args.val_data, "test")
    elif config.val_fraction > 0 and len(data) > 1:
        train_samples, val_samples = data.split(config.val_fraction, config.seed)
    else:
        train_samples, val_samples = data, []
    import torch

    torch.manual_seed(config.seed)  # the initial weights too: one --seed, one result (issue 18)
    model = build_training_model(args.family, args.base, _json_option(args.model_config, "--model-config"),
                                 list(data.class_names))

    bar = None
    gen = train_iter(model, train_samples, val_samples, config)
    try:
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                result = stop.value
                break
            if isinstance(event, TrainStep):
                if bar is None or bar.total != event.steps_per_epoch or event.step == 1:
                    if bar is not None:
                        bar.close()
                    bar = tqdm(total=event.steps_per_epoch, desc=f"epoch {event.epoch}/{config.epochs}",
                               unit="step", file=sys.stderr, disable=None)
                bar.update(1)
                bar.set_postfix(loss=f"{event.losses['total']:.4f}", lr=f"{event.lr:.2g}")
            elif isinstance(event, Validation):
                if bar is not None:
                    bar.close()
                    bar = None
                shown = ", ".join(f"{k} {v:.4f}" for k, v in event.metrics.items() if k in ("aji", "dice", "pq", "mpq+"))
                print(f"epoch {event.epoch}: {shown or 'no validation images'}" + (" (best)" if event.best else ""))
            elif isinstance(event, Message):
                print(event.text, file=sys.stderr)
            elif isinstance(event, Progress):
                pass
    finally:
        if bar is not None:
            bar.close()
    if result.best_path is not None:
        print(f"best checkpoint: {result.best_path} (validation PQ {result.best_metric:.4f})")
    return 0


def _recipe_options(args) -> dict:
    """FinetuneRecipe overrides from --config and the flags; --epochs × --steps-per-epoch gives steps (an
    "epoch" of a fine-tune is the stretch between two held-out evaluations)."""
    for flag, key in (("--resume", "resume"), ("--workers", "num_workers"), ("--oversample-rare", "oversample_rare")):
        if getattr(args, key) is not None:
            raise ValueError(f"{flag} is not used when fine-tuning (--base); drop it")
    options = _json_option(args.config, "--config")
    for key in ("crop", "batch_size", "lr", "seed", "steps", "synthesis"):
        value = getattr(args, key)
        if value is not None:
            options[key] = value
    if args.augment is not None:
        options["augment"] = args.augment
    if args.steps_per_epoch is not None:
        options["eval_every"] = args.steps_per_epoch
    if args.epochs is not None:
        if args.steps is not None:
            raise ValueError("give --steps or --epochs with --base, not both")
        if args.steps_per_epoch is None:
            raise ValueError("with --base, --epochs needs --steps-per-epoch (steps between held-out "
                             "evaluations); or give --steps, or neither for the data-scaled default")
        options["steps"] = args.epochs * args.steps_per_epoch
    return options


def _load_images(folder: str) -> list:
    from ..data.io import read_image

    path = Path(folder).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"--pseudo-data {folder!r} is not a folder of images")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".png", ".tif", ".tiff", ".jpg", ".jpeg"))
    if not files:
        raise FileNotFoundError(f"--pseudo-data {folder!r} holds no .png/.tif/.jpg images")
    return [read_image(p) for p in files]


def run_finetune(args) -> int:
    """``cellzoo train --base``: the base's held-out score first, each evaluation, then the verdict."""
    from tqdm import tqdm

    from ..train.finetune import FinetuneRecipe, finetune_iter, prepare_finetune_data
    from ..types import Message, TrainStep, Validation

    options = _recipe_options(args)
    data = load_training_data(args.data)
    val = load_training_data(args.val_data, "test") if args.val_data else None
    model = build_training_model(args.family, args.base, _json_option(args.model_config, "--model-config"),
                                 list(data.class_names))
    prepared = prepare_finetune_data(list(data), list(val) if val is not None else None,
                                     val_fraction=args.val_fraction if args.val_fraction is not None else 0.25,
                                     seed=args.seed if args.seed is not None else 0)
    if args.max_val_images is not None:
        prepared.val = prepared.val[: args.max_val_images]
    recipe = FinetuneRecipe.for_data(prepared.train, **options)
    pseudo = _load_images(args.pseudo_data) if args.pseudo_data else None
    bar, last_step = None, 0
    gen = finetune_iter(model, prepared, recipe, device=args.device or "auto", out_dir=args.out,
                        pseudo_images=pseudo, base_name=args.base)
    try:
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                result = stop.value
                break
            if isinstance(event, TrainStep):
                last_step = event.step
                if bar is None:
                    bar = tqdm(total=event.steps_per_epoch, desc="fine-tune", unit="step", file=sys.stderr,
                               disable=None)
                bar.update(1)
                bar.set_postfix(loss=f"{event.losses['total']:.4f}", lr=f"{event.lr:.2g}")
            elif isinstance(event, Validation):
                shown = ", ".join(f"{k} {event.metrics[k]:.4f}" for k in ("pq", "aji", "dice") if k in event.metrics)
                if event.epoch == 0:
                    print(f"base {args.base} on the held-out data: {shown}")
                else:
                    print(f"step {last_step}: {shown}" + (" (best)" if event.best else ""))
            elif isinstance(event, Message) and not event.text.startswith(("base on the held-out",
                                                                             "did not beat", "improved on")):
                print(event.text, file=sys.stderr)
    finally:
        if bar is not None:
            bar.close()
    print(result.summary())
    return 0
