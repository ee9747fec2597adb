"""The npe2 manifest: valid, every command importable, the widgets/reader/writers/sample contributed."""
from __future__ import annotations

import importlib

from npe2 import PluginManifest

from cellzoo._napari import __file__ as napari_pkg

EXPECTED_WIDGETS = {"Segment": "SegmentWidget", "Correct": "CorrectWidget", "Evaluate": "EvaluateWidget",
                    "Fine-tune": "FinetuneWidget"}


def _manifest() -> PluginManifest:
    return PluginManifest.from_distribution("napari-cellzoo")


def test_manifest_validates_and_every_command_imports():
    manifest = _manifest()
    manifest.validate_imports()  # raises when a python_name does not resolve
    for command in manifest.contributions.commands:
        module, attr = command.python_name.split(":")
        assert callable(getattr(importlib.import_module(module), attr)), command.id


def test_manifest_contributes_widgets_reader_writers_and_sample():
    manifest = _manifest()
    contributions = manifest.contributions
    assert {w.display_name for w in contributions.widgets} == set(EXPECTED_WIDGETS)
    [reader] = contributions.readers
    assert reader.accepts_directories and {"*.xml", "*.npy", "*.json", "*.geojson", "*instance*.tif"} <= set(
        reader.filename_patterns)
    # napari's own reader has the plain raster patterns; claiming them too would ask "Choose reader" on every drop
    assert not {"*.tif", "*.tiff", "*.png", "*.jpg", "*.jpeg", "*.bmp"} & set(reader.filename_patterns)
    extensions = {ext for writer in contributions.writers for ext in writer.filename_extensions}
    assert {".tif", ".geojson", ".json"} <= extensions
    assert all(writer.layer_types == ["labels"] for writer in contributions.writers)
    assert [s.key for s in contributions.sample_data] == ["dsb2018_nuclei"]


def test_installed_manifest_is_the_one_in_the_source_tree():
    manifest = _manifest()
    assert manifest.name == "napari-cellzoo"
    assert str(manifest.package_metadata.name) == "napari-cellzoo"
    assert napari_pkg  # the package that holds napari.yaml imports without Qt errors


def test_widgets_dock_into_a_real_viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    for name, class_name in EXPECTED_WIDGETS.items():
        dock, widget = viewer.window.add_plugin_dock_widget("napari-cellzoo", name)
        assert type(widget).__name__ == class_name and type(widget).__module__.startswith("cellzoo._napari.")
        assert viewer.window._dock_widgets[dock.name] is dock
