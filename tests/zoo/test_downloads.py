"""Fetching through pooch against a real HTTP server on 127.0.0.1: success, 404, wrong hash,
truncated transfer, server down, offline reuse of the cache, hash recorded at first download,
Google Drive's confirmation page, progress callbacks."""
from __future__ import annotations

import hashlib
import json
import shutil

import pooch
import pytest
import torch

from cellzoo import zoo
from cellzoo.zoo import FetchError, GoogleDriveDownloader
from zoo_helpers import registry_entry, write_registry


def _leftovers(cache):
    """Files in the cache other than the recorded-hash book-keeping."""
    if not cache.exists():
        return []
    return sorted(p.name for p in cache.rglob("*") if p.is_file() and p.name != "recorded_sha256.json")


def _serve(server, tiny_weights, name="tiny.safetensors"):
    shutil.copy(tiny_weights[0], server.root / name)
    return server.root / name


@pytest.fixture
def tiny_registry(zoo_env, tiny_weights, monkeypatch):
    _, sha, _ = tiny_weights
    path = write_registry(zoo_env["tmp"] / "registry.json", [
        registry_entry("tiny-known", filename="tiny.safetensors", sha256=sha),
        registry_entry("tiny-unknown", filename="tiny.safetensors", sha256=None),
        registry_entry("tiny-wrong", filename="tiny.safetensors", sha256="0" * 64),
        registry_entry("tiny-nolink", filename="tiny.safetensors", urls=[]),
        registry_entry("tiny-embedded", embedded=True, urls=[], filename="no-such-file.safetensors"),
    ])
    monkeypatch.setenv("CELLZOO_REGISTRY", str(path))
    return path


def test_fetch_success_then_offline_reuse(server, tiny_weights, tiny_registry, zoo_env, monkeypatch):
    _serve(server, tiny_weights)
    monkeypatch.setenv("CELLZOO_MIRROR", server.url + "/files/")
    assert zoo.model_status("tiny-known") == "downloadable"
    path = zoo.fetch("tiny-known", progress=False)
    assert path == zoo_env["cache"] / "tiny.safetensors"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == tiny_weights[1]
    assert zoo.model_status("tiny-known") == "cached"
    assert _leftovers(zoo_env["cache"]) == ["tiny.safetensors"]
    hits = len(server.requests)

    server.stop()  # offline from now on
    again = zoo.fetch("tiny-known", progress=False)
    assert again == path
    assert len(server.requests) == hits
    model = zoo.load_model("tiny-known")
    assert model.metadata["name"] == "tiny-known" and model.metadata["licence"] == "CC0-1.0 (test)"
    for key, value in tiny_weights[2].state_dict().items():
        assert torch.equal(model.state_dict()[key], value)


def test_fetch_404_names_file_folder_and_source(server, tiny_registry, zoo_env, monkeypatch):
    monkeypatch.setenv("CELLZOO_MIRROR", server.url + "/files")  # nothing served
    with pytest.raises(FetchError) as err:
        zoo.fetch("tiny-known", progress=False)
    text = str(err.value)
    assert "HTTP 404" in text and "tiny.safetensors" in text and str(zoo_env["cache"]) in text
    assert "https://example.invalid/weights/tiny.safetensors" in text  # where to get it by hand
    assert _leftovers(zoo_env["cache"]) == []


def test_fetch_wrong_hash_leaves_nothing(server, tiny_weights, tiny_registry, zoo_env, monkeypatch):
    _serve(server, tiny_weights)
    monkeypatch.setenv("CELLZOO_MIRROR", server.url + "/files")
    with pytest.raises(FetchError, match="hash does not match"):
        zoo.fetch("tiny-wrong", progress=False)
    assert _leftovers(zoo_env["cache"]) == []
    assert zoo.model_status("tiny-wrong") == "downloadable"


def test_fetch_truncated_transfer_leaves_nothing(server, tiny_weights, tiny_registry, zoo_env, monkeypatch):
    _serve(server, tiny_weights)
    monkeypatch.setenv("CELLZOO_MIRROR", server.url + "/truncated")
    for name in ("tiny-known", "tiny-unknown"):  # with and without a known hash
        with pytest.raises(FetchError, match="broke off"):
            zoo.fetch(name, progress=False)
        assert _leftovers(zoo_env["cache"]) == []
    assert not (zoo_env["cache"] / "recorded_sha256.json").exists()


def test_fetch_server_down(server, tiny_weights, tiny_registry, zoo_env, monkeypatch):
    _serve(server, tiny_weights)
    monkeypatch.setenv("CELLZOO_MIRROR", server.url + "/files")
    server.stop()
    with pytest.raises(FetchError) as err:
        zoo.fetch("tiny-known", progress=False)
    text = str(err.value)
    assert "could not be reached" in text and "tiny.safetensors" in text and str(zoo_env["cache"]) in text
    assert _leftovers(zoo_env["cache"]) == []


def test_hash_recorded_at_first_download_and_verified_later(server, tiny_weights, tiny_registry, zoo_env,
                                                            monkeypatch):
    _serve(server, tiny_weights)
    monkeypatch.setenv("CELLZOO_MIRROR", server.url + "/files")
    path = zoo.fetch("tiny-unknown", progress=False)
    record = json.loads((zoo_env["cache"] / "recorded_sha256.json").read_text())
    assert record["tiny.safetensors"]["sha256"] == tiny_weights[1]
    assert record["tiny.safetensors"]["source"].startswith(server.url)

    # the cached file gets damaged: with the server up it is downloaded afresh ...
    path.write_bytes(b"damaged" + path.read_bytes()[7:])
    fresh = zoo.fetch("tiny-unknown", progress=False)
    assert hashlib.sha256(fresh.read_bytes()).hexdigest() == tiny_weights[1]
    # ... and with no way to download it, the mismatch is an error, not a silent load
    fresh.write_bytes(b"damaged" + fresh.read_bytes()[7:])
    monkeypatch.delenv("CELLZOO_MIRROR")
    monkeypatch.setenv("CELLZOO_REGISTRY", str(tiny_registry))
    with pytest.raises(FetchError, match="does not match the hash recorded at first download"):
        zoo.fetch("tiny-nolink", progress=False)


def test_no_public_link_says_where_to_put_the_file(tiny_registry, tiny_weights, zoo_env):
    assert zoo.model_status("tiny-nolink") == "missing"
    with pytest.raises(FetchError) as err:
        zoo.fetch("tiny-nolink", progress=False)
    assert "tiny.safetensors" in str(err.value) and str(zoo_env["cache"]) in str(err.value)
    # putting the file there by hand makes it usable (its hash is recorded from then on)
    zoo_env["cache"].mkdir(parents=True)
    shutil.copy(tiny_weights[0], zoo_env["cache"] / "tiny.safetensors")
    assert zoo.model_status("tiny-nolink") == "cached"
    assert zoo.fetch("tiny-nolink", progress=False) == zoo_env["cache"] / "tiny.safetensors"


def test_missing_embedded_weights(tiny_registry):
    assert zoo.model_status("tiny-embedded") == "missing"
    with pytest.raises(FileNotFoundError, match="embedded weights of 'tiny-embedded' are missing"):
        zoo.fetch("tiny-embedded")


def test_progress_callback_reports_bytes(server, tiny_weights, tiny_registry, zoo_env, monkeypatch):
    source = _serve(server, tiny_weights)
    monkeypatch.setenv("CELLZOO_MIRROR", server.url + "/files")
    calls = []
    zoo.fetch("tiny-known", progress=lambda done, total: calls.append((done, total)))
    size = source.stat().st_size
    assert calls and calls[-1] == (size, size)
    assert all(total == size for _, total in calls)


@pytest.mark.parametrize("variant", ["form", "cookie"])
def test_google_drive_confirmation_page(server, tiny_weights, tmp_path, variant):
    _serve(server, tiny_weights, "drivefile")
    if variant == "form":
        url = f"{server.url}/file/d/drivefile/view?usp=sharing"  # the share link form
    else:
        url = f"{server.url}/uc?id=drivefile&cookie=1"
    target = tmp_path / "dl"
    path = pooch.retrieve(url, known_hash=f"sha256:{tiny_weights[1]}", fname="drivefile", path=target,
                          downloader=GoogleDriveDownloader())
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == tiny_weights[1]
    # the first answer was the HTML warning page, the second the file
    assert len(server.requests) == 2
    assert "confirm=" in server.requests[1]


def test_google_drive_page_without_form_is_an_error(server, tmp_path):
    (server.root / "drivefile").write_bytes(b"x" * 100)
    url = f"{server.url}/download?id=drivefile"  # always answers with a bare HTML page
    import requests

    with pytest.raises(requests.exceptions.RequestException, match="without a download form"):
        pooch.retrieve(url, known_hash=None, fname="f.bin", path=tmp_path / "dl",
                       downloader=GoogleDriveDownloader())
    assert list((tmp_path / "dl").iterdir()) == []


def test_drive_links_are_routed_to_the_drive_downloader():
    from cellzoo.zoo.downloads import drive_direct_url, is_drive_url

    url = "https://drive.google.com/file/d/1082dGUDeGQQwiOxylXmgU5ueArpGs2Ib/view?usp=sharing"
    assert is_drive_url(url) and not is_drive_url("https://example.org/file/d/x/view")
    assert drive_direct_url(url) == "https://drive.google.com/uc?export=download&id=1082dGUDeGQQwiOxylXmgU5ueArpGs2Ib"


def test_damaged_cached_file_with_known_hash_is_replaced(server, tiny_weights, tiny_registry, zoo_env, monkeypatch):
    _serve(server, tiny_weights)
    monkeypatch.setenv("CELLZOO_MIRROR", server.url + "/files")
    path = zoo.fetch("tiny-known", progress=False)
    path.write_bytes(path.read_bytes()[:-10])  # e.g. a disk error or a partial manual copy
    fresh = zoo.fetch("tiny-known", progress=False)
    assert hashlib.sha256(fresh.read_bytes()).hexdigest() == tiny_weights[1]
    path.write_bytes(path.read_bytes()[:-10])
    server.stop()
    with pytest.raises(FetchError, match="could not be reached"):
        zoo.fetch("tiny-known", progress=False)
    assert _leftovers(zoo_env["cache"]) == []  # the damaged copy is not kept either
