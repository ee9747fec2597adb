"""Registry validation, statuses, user models (register/list/load), load_model's inputs."""
from __future__ import annotations

import json

import pytest
import torch

from cellzoo import zoo
from cellzoo.zoo import load_registry, register_model
from zoo_helpers import registry_entry, tiny_model, write_registry


def test_packaged_registry_is_valid_and_complete(zoo_env):
    models = load_registry()
    for name in ("cellzoo-he", "cellzoo-fluo", "repsnet-l-conic", "repsnet-s-conic", "fullnet-multiorgan",
                 "fullnet-glas"):
        assert name in models
    assert zoo.default_model_name() == "cellzoo-he"
    assert models["cellzoo-he"].embedded and "non-commercial" in models["cellzoo-he"].licence
    assert "CC0" in models["cellzoo-fluo"].licence
    for info in models.values():
        assert info.licence and info.training_data and info.source
        assert len(info.class_colors) == len(info.class_names)
        if not info.embedded:
            assert info.sha256 is None  # authors published none: recorded at first download
    listed = {m.name: m for m in zoo.list_models()}
    for name in ("cellzoo-he", "cellzoo-fluo"):
        present = (zoo.locations.EMBEDDED_DIR / f"{name}.safetensors").is_file()
        assert listed[name].status == ("embedded" if present else "missing")
    assert listed["repsnet-l-conic"].status == "downloadable"
    assert listed["repsnet-s-conic"].status == "missing"  # the README's link is FairMOT's dla34.pth


@pytest.mark.parametrize("change,message", [
    ({"family": "unet"}, "field 'family' must be one of"),
    ({"class_colors": ["#000000"]}, "field 'class_colors' has 1 colours for 3 class names"),
    ({"class_names": ["nucleus", "x"]}, "must start with 'background'"),
    ({"sha256": "abc"}, "field 'sha256' must be 64 lower-case hex digits"),
    ({"urls": ["ftp://x/y"]}, "field 'urls' must be a list of http"),
    ({"size": -3}, "field 'size' must be a positive integer"),
    ({"licence": " "}, "field 'licence' must not be empty"),
    ({"colour": "red"}, "field 'colour' is not a registry field"),
    ({"name": "bad name!"}, "field 'name' must be 1-80 letters"),
])
def test_registry_errors_name_the_entry_and_field(tmp_path, change, message):
    good = registry_entry("good-one")
    bad = registry_entry("bad-one")
    bad.update(change)
    path = write_registry(tmp_path / "reg.json", [good, bad])
    with pytest.raises(ValueError) as err:
        load_registry(path)
    assert "entry 1" in str(err.value) and message in str(err.value) and str(path) in str(err.value)


def test_registry_missing_field_duplicate_and_bad_json(tmp_path):
    entry = registry_entry("a")
    del entry["licence"]
    with pytest.raises(ValueError, match="entry 0 .*field 'licence' is missing|entry 0: field 'licence' is missing"):
        load_registry(write_registry(tmp_path / "r1.json", [entry]))
    with pytest.raises(ValueError, match="name 'a' is used twice"):
        load_registry(write_registry(tmp_path / "r2.json", [registry_entry("a"), registry_entry("a")]))
    (tmp_path / "r3.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        load_registry(tmp_path / "r3.json")
    with pytest.raises(FileNotFoundError, match="CELLZOO_REGISTRY"):
        load_registry(tmp_path / "absent.json")


def test_user_model_dir_env(zoo_env, monkeypatch):
    assert zoo.user_model_dir() == zoo_env["models"]
    monkeypatch.delenv("CELLZOO_MODELS")
    assert zoo.user_model_dir().name == "models" and "cellzoo" in str(zoo.user_model_dir())


def test_register_list_and_load_user_model(zoo_env):
    model = tiny_model(seed=3)
    path = register_model(model, "my-finetuned", {"licence": "CC BY-NC-SA 4.0", "training_data": "my slides",
                                                  "metrics": {"pq": 0.61}})
    assert path == zoo_env["models"] / "my-finetuned.safetensors" and path.is_file()
    assert [p.name for p in zoo_env["models"].iterdir()] == ["my-finetuned.safetensors"]  # no temp files
    listed = {m.name: m for m in zoo.list_models()}
    info = listed["my-finetuned"]
    assert (info.status, info.family, info.path) == ("user", "repsnet", path)
    assert info.class_names == ["background", "a", "b"] and info.metrics == {"pq": 0.61}
    assert zoo.model_status("my-finetuned") == "user"
    assert zoo.fetch("my-finetuned") == path

    loaded = zoo.load_model("my-finetuned")
    assert loaded.metadata["licence"] == "CC BY-NC-SA 4.0" and loaded.metadata["name"] == "my-finetuned"
    assert not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    by_path = zoo.load_model(path)
    assert by_path.metadata["path"] == str(path)

    # replacing a user model is allowed, atomically
    register_model(tiny_model(seed=4), "my-finetuned", {})
    assert [p.name for p in zoo_env["models"].iterdir()] == ["my-finetuned.safetensors"]


def test_register_refuses_zoo_names_and_bad_names(zoo_env):
    with pytest.raises(ValueError, match="is a model of the zoo and cannot be replaced.*cellzoo-he-finetuned"):
        register_model(tiny_model(), "cellzoo-he", {})
    with pytest.raises(ValueError, match="is not allowed"):
        register_model(tiny_model(), "../escape", {})
    assert not zoo_env["models"].exists() or not any(zoo_env["models"].iterdir())


def test_unknown_model_lists_choices(zoo_env):
    with pytest.raises(ValueError, match="unknown model 'nope'.*cellzoo-he"):
        zoo.load_model("nope")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        zoo.load_model(zoo_env["tmp"] / "absent.safetensors")


def test_registry_pth_entry_gets_registry_config_over_detected_architecture(zoo_env, tiny_weights, monkeypatch):
    """A cached authors' .pth is converted on load; the entry's class names and post-processing apply,
    the architecture comes from the weights."""
    model = tiny_model()
    zoo_env["cache"].mkdir(parents=True)
    torch.save(model.state_dict(), zoo_env["cache"] / "authors.pth")
    entry = registry_entry("authors-model", filename="authors.pth", urls=[],
                           class_names=["background", "tumour", "immune"],
                           config={"variant": "L", "filters": [1, 2, 3, 4, 5], "boundary_threshold": 5.0})
    monkeypatch.setenv("CELLZOO_REGISTRY", str(write_registry(zoo_env["tmp"] / "r.json", [entry])))
    loaded = zoo.load_model("authors-model")
    assert loaded.config.variant == "S" and list(loaded.config.filters) == [4, 8, 8, 8]
    assert loaded.config.boundary_threshold == 5.0
    assert loaded.class_names == ["background", "tumour", "immune"]
    assert loaded.metadata["config"]["boundary_threshold"] == 5.0
    record = json.loads((zoo_env["cache"] / "recorded_sha256.json").read_text())
    assert record["authors.pth"]["source"] == "placed in the cache by hand"


def test_embedded_model_metrics_come_from_its_metadata(zoo_env, monkeypatch):
    """Embedded weights (written by the training script into zoo/embedded/) carry their measured metrics."""
    from cellzoo.zoo import locations, save_weights

    folder = zoo_env["tmp"] / "embedded"
    monkeypatch.setattr(locations, "EMBEDDED_DIR", folder)
    entry = registry_entry("tiny-embedded", embedded=True, urls=[], metrics={})
    monkeypatch.setenv("CELLZOO_REGISTRY", str(write_registry(zoo_env["tmp"] / "r.json", [entry])))
    assert zoo.model_status("tiny-embedded") == "missing"
    save_weights(tiny_model(), folder / "tiny-embedded.safetensors", {"metrics": {"consep_test_pq": 0.5}})
    info = zoo.get_model_info("tiny-embedded")
    assert info.status == "embedded" and info.metrics == {"consep_test_pq": 0.5}
    assert zoo.load_model("tiny-embedded").metadata["metrics"] == {"consep_test_pq": 0.5}


def test_load_model_device_choice(zoo_env):
    register_model(tiny_model(), "on-device", {})
    assert next(zoo.load_model("on-device", device="auto").parameters()).device.type in ("cpu", "cuda", "mps")
    if torch.cuda.is_available():
        assert next(zoo.load_model("on-device", device="cuda").parameters()).is_cuda
    else:
        with pytest.raises(ValueError, match="no CUDA GPU is available"):
            zoo.load_model("on-device", device="cuda")
