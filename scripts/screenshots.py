"""Screenshots of the Segment and Correct widgets with the embedded H&E model.

    xvfb-run -a -s "-screen 0 1600x1200x24" python scripts/screenshots.py docs/screenshots
"""
import os, sys
import numpy as np
os.environ["CELLZOO_SYNC_WORKERS"] = "1"
import torch; torch.set_num_threads(2)
from cellzoo._paths import shared_data
import napari
from skimage import io
from qtpy.QtWidgets import QApplication
out = sys.argv[1]
tile = io.imread(shared_data() / "consep/stitched/test/images/test_1.png")[200:584, 300:684]
viewer = napari.Viewer(title="napari-cellzoo", show=True)
viewer.window.resize(1500, 900)
image = viewer.add_image(tile, name="CoNSeP test_1")
from cellzoo._napari.segment_widget import SegmentWidget
from cellzoo._napari.correct_widget import CorrectWidget
seg = SegmentWidget(viewer)
dock = viewer.window.add_dock_widget(seg, name="Segment (Cell Zoo)", area="right")
seg.model_combo.setCurrentIndex(seg.model_combo.findData("cellzoo-he"))
seg.advanced.expand(animate=False)
seg.run()
inst = viewer.layers["CoNSeP test_1 instances"]
cls = viewer.layers["CoNSeP test_1 classes"]




viewer.layers.selection.active = inst
viewer.reset_view()
for _ in range(20):
    QApplication.processEvents()
viewer.window.screenshot(os.path.join(out, "segment.png"), canvas_only=False)
print("segment:", seg.status_label.text())

viewer.window.remove_dock_widget(dock)
corr = CorrectWidget(viewer)
viewer.window.add_dock_widget(corr, name="Correct (Cell Zoo)", area="right")
labels = np.asarray(inst.data)
areas = np.bincount(labels.ravel()); areas[0] = 0
a, b = [int(i) for i in np.argsort(areas)[::-1][:2]]
corr.toggle_selection(a); corr.toggle_selection(b)
big = int(np.argsort(areas)[::-1][2])
rows, cols = np.nonzero(labels == big)
order = np.argsort(cols * 1000 + rows)
for k in (order[len(order) // 8], order[-len(order) // 8]):
    corr.add_seed((rows[k], cols[k]))
corr.class_combo.setCurrentIndex(corr.class_combo.findData(2))
corr.folder_edit.setText("~/cellzoo-training-set")
corr.status_label.setText(f"Selected {a} and {b}: Shift+M merges them; Alt+click placed 2 seeds in {big}: Shift+S splits it.")


inst.show_selected_label = False
viewer.layers.selection.active = inst
for _ in range(20):
    QApplication.processEvents()
viewer.window.screenshot(os.path.join(out, "correct.png"), canvas_only=False)
print("correct done")
viewer.close()
