"""Pooch, proven end to end for every registry entry whose file we can produce (our own, embedded weights):
a real HTTP server on 127.0.0.1 serves them under their registry file names, ``CELLZOO_MIRROR`` points the
zoo at it, pooch fetches each into an empty cache with the registry's sha256 pinned, and the fetched model
segments a real image (DSB 2018 for fluorescence, a MoNuSeg test crop for H&E) with a floor on its score.
The authors' downloadable checkpoints cannot be served here (no internet, no copies), so they are not covered.

The served registry is the packaged one with our entries marked ``embedded: false`` (as a slim install or a
release host would list them): same names, file names, sha256 and sizes."""
from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from cellzoo import zoo
from cellzoo.infer.engine import segment
from cellzoo.metrics.instance import aji, panoptic_quality
from cellzoo.zoo import FetchError, load_model, load_registry
from cellzoo.zoo.locations import EMBEDDED_DIR, PACKAGED_REGISTRY

OWN = [info for info in load_registry(PACKAGED_REGISTRY).values() if info.embedded]


def _modality(info) -> str:
    text = f"{info.normalization} {info.training_data}".lower()
    return "fluo" if ("fluorescence" in text or "dsb" in text) else "he"


def test_every_own_entry_pins_its_file():
    assert {"cellzoo-he", "cellzoo-fluo"} <= {info.name for info in OWN}
    for info in OWN:
        path = EMBEDDED_DIR / info.filename
        assert info.filename and path.is_file(), info.name
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert (info.sha256, info.size) == (digest, path.stat().st_size), (
            f"registry.json's sha256/size of {info.name!r} do not match {path} (weights re-trained?): set "
            f'"sha256": "{digest}", "size": {path.stat().st_size}')


@pytest.fixture
def mirror(zoo_env, server, monkeypatch):
    """Our weight files on the loopback server, a registry listing them as downloads, an empty cache."""
    entries = json.loads(PACKAGED_REGISTRY.read_text(encoding="utf-8"))["models"]
    served = []
    for entry in entries:
        if entry["embedded"]:
            shutil.copy(EMBEDDED_DIR / entry["filename"], server.root / entry["filename"])
            served.append(dict(entry, embedded=False))
    registry = zoo_env["tmp"] / "registry.json"
    registry.write_text(json.dumps({"schema": 1, "models": served}), encoding="utf-8")
    monkeypatch.setenv("CELLZOO_REGISTRY", str(registry))
    monkeypatch.setenv("CELLZOO_MIRROR", f"{server.url}/files/")
    assert not zoo_env["cache"].exists()
    return server


@pytest.fixture(scope="module")
def real_images(shared_data):
    import imageio.v3 as iio
    import tifffile

    dsb_image = sorted((shared_data / "dsb2018" / "test" / "images").glob("*.tif"))[0]
    dsb = (tifffile.imread(dsb_image), tifffile.imread(shared_data / "dsb2018" / "test" / "masks" / dsb_image.name))
    he_image = sorted((shared_data / "monuseg2018" / "images" / "test").glob("*.png"))[0]
    he_labels = iio.imread(shared_data / "monuseg2018" / "labels" / "test" / he_image.name)
    window = (slice(200, 456), slice(200, 456))
    return {"fluo": (dsb[0][:256, :256], dsb[1][:256, :256]),
            "he": (iio.imread(he_image)[window][..., :3], he_labels[window])}


def test_own_weights_fetched_through_pooch_from_a_mirror_load_and_segment(mirror, zoo_env, real_images):
    cache = zoo_env["cache"]
    for info in OWN:
        assert zoo.model_status(info.name) == "downloadable"
        path = zoo.fetch(info.name, progress=False)
        assert path == cache / info.filename and path.stat().st_size == info.size
        assert hashlib.sha256(path.read_bytes()).hexdigest() == info.sha256
        assert f"/files/{info.filename}" in mirror.requests
        assert zoo.model_status(info.name) == "cached"

        model = load_model(info.name)
        assert model.metadata["path"] == str(path) and model.metadata["name"] == info.name
        image, truth = real_images[_modality(info)]
        result = segment(model, image, device="cpu")
        score = aji(truth, result.labels)
        assert result.count >= 5 and score >= 0.45, (info.name, result.count, score,
                                                      panoptic_quality(truth, result.labels))
    record = json.loads((cache / "recorded_sha256.json").read_text())
    assert {info.filename for info in OWN} <= set(record)
    # a second fetch is served by the cache: no new request
    before = len(mirror.requests)
    zoo.fetch(OWN[0].name, progress=False)
    assert len(mirror.requests) == before


def test_a_corrupted_served_file_is_refused_and_leaves_nothing(mirror, zoo_env):
    info = next(i for i in OWN if i.name == "cellzoo-fluo")
    served = mirror.root / info.filename
    data = bytearray(served.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the tensor data: same size, still valid safetensors
    served.write_bytes(bytes(data))
    with pytest.raises(FetchError, match="hash does not match"):
        zoo.fetch(info.name, progress=False)
    cache = zoo_env["cache"]
    assert not cache.exists() or not any(p.is_file() for p in cache.rglob("*"))
    assert zoo.model_status(info.name) == "downloadable"
    with pytest.raises(FetchError):
        load_model(info.name)
    assert served.stat().st_size == info.size  # same size: only the hash can tell


def test_an_install_without_the_embedded_files_fetches_them_from_the_mirror(zoo_env, server, monkeypatch,
                                                                             real_images):
    """The packaged registry as it is; the package's embedded folder empty (a slim install): with
    CELLZOO_MIRROR set, our models are downloadable and come through pooch with their pinned hash."""
    from cellzoo.zoo import locations

    info = next(i for i in OWN if i.name == "cellzoo-fluo")
    monkeypatch.setattr(locations, "EMBEDDED_DIR", zoo_env["tmp"] / "no-embedded-files")
    assert zoo.model_status(info.name) == "missing"  # no mirror: nothing to get it from
    with pytest.raises(FileNotFoundError, match="CELLZOO_MIRROR"):
        zoo.fetch(info.name, progress=False)
    shutil.copy(EMBEDDED_DIR / info.filename, server.root / info.filename)
    monkeypatch.setenv("CELLZOO_MIRROR", f"{server.url}/files")
    assert zoo.model_status(info.name) == "downloadable"
    path = zoo.fetch(info.name, progress=False)
    assert path == zoo_env["cache"] / info.filename and zoo.model_status(info.name) == "cached"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == info.sha256
    image, truth = real_images["fluo"]
    result = segment(load_model(info.name), image, device="cpu")
    assert aji(truth, result.labels) >= 0.45
