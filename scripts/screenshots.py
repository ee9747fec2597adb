"""README screenshots of the four widgets, made with the embedded models on real images.

    xvfb-run -a -s "-screen 0 1600x1200x24" python scripts/screenshots.py docs/screenshots
    ... scripts/screenshots.py docs/screenshots --only evaluate,finetune

- segment.png: a CoNSeP H&E crop segmented by cellzoo-he (advanced thresholds open, class legend).
- correct.png: the same result in the Correct widget, two instances selected, two split seeds placed.
- evaluate.png: a DSB 2018 test image segmented by cellzoo-fluo, scored against its ground truth.
- finetune.png: Fine-tune docked under Segment, cellzoo-fluo tuned for a few steps on two DSB train
  images (a private model folder, so nothing is added to yours).
- slide.png: a pyramidal TIFF made from four MoNuSeg test images opened lazily with "Open slide…", the field
  of view segmented region by region into an OME-Zarr store, shown as multiscale Labels.

Jobs run synchronously (CELLZOO_SYNC_WORKERS=1), so each shot shows a finished result.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

os.environ["CELLZOO_SYNC_WORKERS"] = "1"
os.environ.setdefault("CELLZOO_MODELS", tempfile.mkdtemp(prefix="cellzoo-screenshot-models-"))

WINDOW = (1500, 900)
SHOTS = ("segment", "correct", "evaluate", "finetune", "slide")


def _settle(app, rounds: int = 30) -> None:
    for _ in range(rounds):
        app.processEvents()


def _new_viewer():
    import napari

    viewer = napari.Viewer(title="napari-cellzoo", show=True)
    viewer.window._qt_window.showNormal()
    viewer.window.resize(*WINDOW)
    return viewer


def _segment(viewer, image_layer, model: str):
    from cellzoo._napari.segment_widget import SegmentWidget

    widget = SegmentWidget(viewer)
    dock = viewer.window.add_dock_widget(widget, name="Segment (Cell Zoo)", area="right")
    widget.image_combo.setCurrentText(image_layer.name)
    widget.model_combo.setCurrentIndex(widget.model_combo.findData(model))
    widget.run()
    return widget, dock


def shoot_segment_and_correct(out: Path, app, data: Path, which: set[str]) -> None:
    from skimage import io

    from cellzoo._napari.correct_widget import CorrectWidget

    viewer = _new_viewer()
    tile = io.imread(data / "consep/stitched/test/images/test_1.png")[200:584, 300:684]
    image = viewer.add_image(tile, name="CoNSeP test_1")
    seg, dock = _segment(viewer, image, "cellzoo-he")
    seg.advanced.expand(animate=False)
    inst = viewer.layers["CoNSeP test_1 instances"]
    viewer.layers.selection.active = inst
    viewer.reset_view()
    _settle(app)
    if "segment" in which:
        viewer.window.screenshot(str(out / "segment.png"), canvas_only=False)
        print("segment:", seg.status_label.text())
    if "correct" in which:
        viewer.window.remove_dock_widget(dock)
        corr = CorrectWidget(viewer)
        viewer.window.add_dock_widget(corr, name="Correct (Cell Zoo)", area="right")
        labels = np.asarray(inst.data)
        areas = np.bincount(labels.ravel())
        areas[0] = 0
        largest = [int(i) for i in np.argsort(areas)[::-1]]
        a, b, big = largest[:3]
        corr.toggle_selection(a)
        corr.toggle_selection(b)
        rows, cols = np.nonzero(labels == big)
        order = np.argsort(cols * 1000 + rows)
        for k in (order[len(order) // 8], order[-len(order) // 8]):
            corr.add_seed((rows[k], cols[k]))
        corr.class_combo.setCurrentIndex(corr.class_combo.findData(2))
        corr.folder_edit.setText("~/cellzoo-training-set")
        corr.status_label.setText(f"Selected {a} and {b}: Shift+M merges them; Alt+click placed 2 seeds in "
                                  f"{big}: Shift+S splits it.")
        inst.show_selected_label = False
        viewer.layers.selection.active = inst
        _settle(app)
        viewer.window.screenshot(str(out / "correct.png"), canvas_only=False)
        print("correct:", corr.status_label.text())
    viewer.close()


def shoot_evaluate(out: Path, app, data: Path) -> None:
    from cellzoo._napari.evaluate_widget import EvaluateWidget
    from cellzoo.data.io import read_image, read_labels

    viewer = _new_viewer()
    # the most crowded test image of at most 520×696 px: a busy but quick example
    sizes = {mask.name: read_labels(mask) for mask in sorted((data / "dsb2018/test/masks").glob("*.tif"))}
    name = max((n for n, m in sizes.items() if m.size <= 520 * 696), key=lambda n: len(np.unique(sizes[n])))
    path = data / "dsb2018/test/images" / name
    image = viewer.add_image(read_image(path), name="DSB test")
    seg, dock = _segment(viewer, image, "cellzoo-fluo")
    viewer.window.remove_dock_widget(dock)
    viewer.add_labels(read_labels(data / "dsb2018/test/masks" / path.name), name="ground truth", visible=False)
    widget = EvaluateWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Evaluate (Cell Zoo)", area="right")
    print("evaluate inputs:", widget.gt_layer.currentText(), "vs", widget.pred_layer.currentText(),
          "| classes:", widget.gt_class_layer.currentText(), widget.pred_class_layer.currentText(),
          "| warnings:", widget.warnings)
    widget.run()
    viewer.layers["DSB test classes"].visible = False  # one class: the instance outlines say more
    viewer.layers.selection.active = viewer.layers["DSB test instances"]
    viewer.reset_view()
    _settle(app)
    viewer.window.screenshot(str(out / "evaluate.png"), canvas_only=False)
    print("evaluate:", widget.status.text(), {k: round(float(v), 3) for k, v in widget.result.summary.items()
                                               if k in ("aji", "dice", "pq", "dsb_ap50")})
    viewer.close()


def shoot_finetune(out: Path, app, data: Path, steps: int) -> None:
    from cellzoo._napari.finetune_widget import FinetuneWidget
    from cellzoo._napari.segment_widget import SegmentWidget
    from cellzoo.data.io import read_image, read_labels

    viewer = _new_viewer()
    names = sorted(p.name for p in (data / "dsb2018/train/images").iterdir())[:2]
    for k, name in enumerate(names):
        viewer.add_image(read_image(data / "dsb2018/train/images" / name), name=f"dsb {k}")
        viewer.add_labels(read_labels(data / "dsb2018/train/masks" / name), name=f"dsb {k} labels")
    seg = SegmentWidget(viewer)
    seg_dock = viewer.window.add_dock_widget(seg, name="Segment (Cell Zoo)", area="right")
    seg.model_combo.setCurrentIndex(seg.model_combo.findData("cellzoo-fluo"))
    widget = FinetuneWidget(viewer)
    dock = viewer.window.add_dock_widget(widget, name="Fine-tune (Cell Zoo)", area="right")
    widget.base_model.setCurrentIndex(widget.base_model.findData("cellzoo-fluo"))
    widget.steps.setValue(steps)
    widget.crop.setValue(192)
    widget.device.setCurrentText("cpu")
    widget.run()
    _settle(app)
    # Fine-tune shares the dock column with Segment: the user drags the divider up and scrolls to the result
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QScrollArea

    viewer.window._qt_window.resizeDocks([seg_dock, dock], [250, 2000], Qt.Orientation.Vertical)
    _settle(app)
    area = widget.findChild(QScrollArea)
    if area is not None:
        area.ensureWidgetVisible(widget.decision, 0, 10)
        area.ensureWidgetVisible(widget.plot, 0, 10)
    viewer.layers.selection.active = viewer.layers["dsb 0 labels"]
    viewer.reset_view()
    _settle(app)
    viewer.window.screenshot(str(out / "finetune.png"), canvas_only=False)
    print("finetune:", widget.status.text())
    viewer.close()


def shoot_slide(out: Path, app, data: Path) -> None:
    import tifffile

    from cellzoo._napari.segment_widget import SegmentWidget
    from cellzoo.data.io import read_image

    names = sorted((data / "monuseg2018/images/test").glob("*.png"))[:4]
    tiles = [read_image(n)[:1000, :1000, :3] for n in names]
    mosaic = np.concatenate([np.concatenate(tiles[:2], 1), np.concatenate(tiles[2:], 1)], 0)
    folder = Path(tempfile.mkdtemp(prefix="cellzoo-screenshot-slide-"))
    path = folder / "biopsy.tif"
    opts = dict(tile=(256, 256), photometric="rgb", compression="zlib", resolutionunit="CENTIMETER")
    with tifffile.TiffWriter(path) as tif:  # a small pyramidal TIFF: 0.25 µm/px, three levels
        tif.write(mosaic, subifds=2, resolution=(4e4, 4e4), **opts)
        for step in (2, 4):
            tif.write(mosaic[::step, ::step], subfiletype=1, resolution=(4e4 / step,) * 2, **opts)
    viewer = _new_viewer()
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment (Cell Zoo)", area="right")
    layer = widget.open_slide(path)
    widget.model_combo.setCurrentIndex(widget.model_combo.findData("cellzoo-he"))
    widget.slide_out.setText(str(folder / "results"))
    viewer.camera.center = (0, 1000 * 0.25, 1000 * 0.25)
    viewer.camera.zoom = viewer.camera.zoom * 2.5
    _settle(app)
    widget.run()
    _settle(app)
    viewer.layers.selection.active = viewer.layers[f"{layer.name} instances"]
    _settle(app)
    viewer.window.screenshot(str(out / "slide.png"), canvas_only=False)
    print("slide:", widget.status_label.text())
    viewer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--only", default=",".join(SHOTS), help="comma-separated subset of " + ", ".join(SHOTS))
    parser.add_argument("--steps", type=int, default=30, help="fine-tune steps for finetune.png")
    args = parser.parse_args(argv)
    which = {name.strip() for name in args.only.split(",") if name.strip()}
    unknown = which - set(SHOTS)
    if unknown:
        parser.error(f"unknown screenshot(s) {sorted(unknown)}; choose from {SHOTS}")

    import torch
    from qtpy.QtWidgets import QApplication

    from cellzoo._paths import shared_data

    torch.set_num_threads(2)
    import napari  # noqa: F401  (creates the QApplication with napari's settings)

    app = QApplication.instance() or QApplication(sys.argv)
    args.out.mkdir(parents=True, exist_ok=True)
    data = shared_data()
    if which & {"segment", "correct"}:
        shoot_segment_and_correct(args.out, app, data, which)
    if "evaluate" in which:
        shoot_evaluate(args.out, app, data)
    if "finetune" in which:
        shoot_finetune(args.out, app, data, args.steps)
    if "slide" in which:
        shoot_slide(args.out, app, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
