"""`cellzoo zoo list | fetch | import`, and an imported authors' checkpoint segmenting through the CLI."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cellzoo.cli import main

sys.path.insert(0, str(Path(__file__).parent / "zoo"))
from zoo_helpers import LoopbackServer, registry_entry, tiny_model, write_registry  # noqa: E402


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CELLZOO_MODELS", str(tmp_path / "models"))
    monkeypatch.delenv("CELLZOO_MIRROR", raising=False)
    monkeypatch.delenv("CELLZOO_REGISTRY", raising=False)
    return tmp_path


def _manifest_checkpoint(shared_data, name, path):
    man = json.loads((shared_data.parent / "checkpoint_manifests" / f"{name}.json").read_text())
    gen = torch.Generator().manual_seed(0)
    ints = man.get("non_float32_dtypes", {})
    state = {k: torch.zeros(s, dtype=torch.int64) if k in ints else torch.randn(s, generator=gen) * 0.05
             for k, s in man["tensors"].items()}
    torch.save(state, path)
    return man


def test_zoo_list_table_and_json(env, capsys):
    assert main(["zoo", "list"]) == 0
    table = capsys.readouterr().out
    header = table.splitlines()[0].split()
    assert header == ["NAME", "FAMILY", "CLASSES", "STATUS", "LICENCE", "METRICS"]
    assert "repsnet-l-conic" in table and "downloadable" in table and "mpq=0.539" in table

    assert main(["zoo", "list", "--json"]) == 0
    models = json.loads(capsys.readouterr().out)
    names = [m["name"] for m in models]
    assert names[:2] == ["cellzoo-he", "cellzoo-fluo"]
    for m in models:
        assert {"name", "family", "status", "licence", "class_names", "metrics"} <= set(m)
        assert m["status"] in ("embedded", "cached", "downloadable", "user", "missing")


def test_zoo_fetch_over_loopback_then_offline(env, tmp_path, monkeypatch, capsys):
    from cellzoo.zoo import save_weights

    server = LoopbackServer(tmp_path / "served")
    (tmp_path / "served").mkdir()
    try:
        save_weights(tiny_model(), tmp_path / "served" / "tiny.safetensors", {"licence": "CC0-1.0 (test)"})
        monkeypatch.setenv("CELLZOO_REGISTRY", str(write_registry(tmp_path / "r.json", [
            registry_entry("tiny", filename="tiny.safetensors")])))
        monkeypatch.setenv("CELLZOO_MIRROR", server.url + "/files")
        assert main(["zoo", "fetch", "tiny", "--quiet"]) == 0
        assert str(env / "cache" / "tiny.safetensors") in capsys.readouterr().out
    finally:
        server.stop()
    assert main(["zoo", "fetch", "tiny", "--quiet"]) == 0  # offline: the cache is used
    assert "in the cache" in capsys.readouterr().out
    assert main(["zoo", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["status"] == "cached"
    monkeypatch.delenv("CELLZOO_REGISTRY")  # the packaged registry, through the (now down) mirror
    assert main(["zoo", "fetch", "repsnet-l-conic", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "RepSNet_L.pth" in err and str(env / "cache") in err and "Traceback" not in err


def test_import_authors_repsnet_s_deploy_and_segment(env, shared_data, tmp_path, capsys):
    """Must-show: a manifest-built RepSNet_S (deploy form) checkpoint imports with `cellzoo zoo import`
    and segments an image through `cellzoo segment --model`."""
    ckpt = tmp_path / "RepSNet_S.pth"
    _manifest_checkpoint(shared_data, "repsnet_s_deploy", ckpt)
    assert main(["zoo", "import", str(ckpt), "--family", "repsnet", "--name", "repsnet-s-mine",
                 "--licence", "research only (authors' weights)"]) == 0
    out = capsys.readouterr().out
    assert "imported RepSNet_S.pth as 'repsnet-s-mine'" in out and "18.6 M parameters" in out
    assert (env / "models" / "repsnet-s-mine.safetensors").is_file()

    assert main(["zoo", "list", "--json"]) == 0
    listed = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert listed["repsnet-s-mine"]["status"] == "user"
    assert listed["repsnet-s-mine"]["licence"] == "research only (authors' weights)"
    assert listed["repsnet-s-mine"]["class_names"][1] == "neutrophil"

    import tifffile

    image_path = tmp_path / "consep_patch.tif"
    tifffile.imwrite(image_path, consep_patch(shared_data))
    out_dir = tmp_path / "out"
    code = main(["segment", str(image_path), "--model", "repsnet-s-mine", "--device", "cpu", "--no-amp",
                 "--out", str(out_dir)])
    assert code == 0, capsys.readouterr().err
    labels = tifffile.imread(out_dir / "consep_patch_instances.tif")
    classes = tifffile.imread(out_dir / "consep_patch_classes.tif")  # 7 CoNIC classes: a class map too
    assert labels.shape == classes.shape == (64, 64)
    assert "consep_patch.tif:" in capsys.readouterr().out


def consep_patch(shared_data):
    from cellzoo.data import read_image

    path = sorted((shared_data / "consep" / "test" / "images").glob("*.jpg"))[0]
    return read_image(path)[:64, :64]


def test_import_errors(env, tmp_path, capsys):
    assert main(["zoo", "import", str(tmp_path / "absent.pth"), "--name", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err
    torch.save(tiny_model().state_dict(), tmp_path / "mine.pth")
    assert main(["zoo", "import", str(tmp_path / "mine.pth"), "--name", "cellzoo-he"]) == 2
    assert "is a model of the zoo" in capsys.readouterr().err
    assert main(["zoo", "import", str(tmp_path / "mine.pth"), "--family", "fullnet", "--name", "x"]) == 2
    assert "looks like a 'repsnet' model" in capsys.readouterr().err
    # detected family, class names given on the command line
    assert main(["zoo", "import", str(tmp_path / "mine.pth"), "--name", "mine",
                 "--class-names", "background,tumour,immune"]) == 0
    from cellzoo.zoo import load_model

    assert load_model("mine").class_names == ["background", "tumour", "immune"]
