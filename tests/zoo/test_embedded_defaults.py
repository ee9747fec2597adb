"""The embedded default models load without network and segment real images as well as recorded.

Thresholds sit a little below what these exact images gave when the weights were embedded
(fluorescence sample AJI 0.872; CoNSeP test patches 0.473 / 0.532), so a broken loader, engine or
post-processing change fails here while the recorded figures stay in benchmarks/results/default_models.md.
"""
import numpy as np
import pytest

import cellzoo
from cellzoo.data import load_shared_dataset, read_image, read_labels
from cellzoo.data.samples import sample_image_path, sample_labels_path
from cellzoo.metrics import aji


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    # an unreachable mirror and an empty cache: embedded weights must not touch either
    monkeypatch.setenv("CELLZOO_MIRROR", "http://127.0.0.1:9/nowhere")
    monkeypatch.setenv("CELLZOO_CACHE", str(tmp_path / "cache"))


def test_fluorescence_default_on_the_bundled_sample():
    model = cellzoo.load_model("cellzoo-fluo")
    assert model.metadata["metrics"]["DSB 2018 test (fp32)"]["dsb_ap50"] > 0.5
    result = cellzoo.segment(model, read_image(sample_image_path()))
    assert result.meta["device"] == "cpu"
    assert aji(read_labels(sample_labels_path()), result.labels) > 0.84
    assert 120 < result.count < 180  # the sample holds 148 annotated nuclei


def test_he_default_types_consep_nuclei():
    model = cellzoo.load_model("cellzoo-he")
    assert "non-commercial" in model.metadata["licence"]
    assert model.class_names == ["background", "other", "inflammatory", "epithelial", "spindle-shaped"]
    data = load_shared_dataset("consep", "test")
    scores = []
    for index in (0, 5):
        sample = data[index]
        result = cellzoo.segment(model, sample.image)
        scores.append(aji(sample.labels, result.labels))
        classes = np.unique(result.class_map()[result.labels > 0])
        assert set(classes.tolist()) <= {1, 2, 3, 4} and len(classes) >= 2
        table = result.table()
        assert set(table["class_name"]) <= set(model.class_names[1:])
    assert np.mean(scores) > 0.46
