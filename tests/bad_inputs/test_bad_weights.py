"""Weights and the zoo: damaged safetensors, metadata, non-checkpoints and zip bombs as .pth, --model paths,
user model names, and downloads without a known hash against a real HTTP server on 127.0.0.1."""
from __future__ import annotations

import json
import struct
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from cellzoo import zoo
from cellzoo.cli import main
from cellzoo.zoo import load_model, safe_torch_load, save_weights
from cellzoo.zoo.weights import load_weights, read_metadata
from zoo_helpers import TINY_REPSNET, registry_entry, tiny_model, write_registry


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    save_weights(tiny_model(), path, {"licence": "CC0-1.0 (test)"})
    return path


def _safetensors(header: dict, data: bytes = b"", length: int | None = None) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def _with_metadata(tmp_path, meta, state=None) -> object:
    path = tmp_path / "m.safetensors"
    state = state if state is not None else {k: v.contiguous().clone() for k, v in tiny_model().state_dict().items()}
    save_file(state, str(path), metadata={"cellzoo": meta if isinstance(meta, str) else json.dumps(meta)})
    return path


F32_ONE = struct.pack("<f", 1.0)
DAMAGED = {
    "empty": (b"", "it is empty"),
    "four bytes": (b"\x01\x02\x03\x04", "it is 4 bytes"),
    "header length beyond the file": (struct.pack("<Q", 5000) + b"{}", "header claims 5,000 bytes"),
    "huge header length": (struct.pack("<Q", 2 ** 62) + b"{}", "header claims"),
    "header not JSON": (struct.pack("<Q", 10) + b"not json!!", "header is not JSON"),
    "header not UTF-8": (struct.pack("<Q", 4) + b"\xff\xfe\xfd\xfc", "header is not JSON"),
    "header a list": (_safetensors([1, 2]), "must be a JSON object"),
    "unknown dtype": (_safetensors({"w": {"dtype": "F128", "shape": [1], "data_offsets": [0, 4]}}, F32_ONE),
                      "no known dtype"),
    "entry not a dict": (_safetensors({"w": 5}), "no known dtype"),
    "negative shape": (_safetensors({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, F32_ONE),
                       "invalid shape"),
    "offsets beyond the data": (_safetensors({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 400]}}, F32_ONE),
                                "lie outside the file"),
    "offsets reversed": (_safetensors({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, F32_ONE),
                         "lie outside the file"),
    "offsets disagree with the shape": (_safetensors({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}},
                                                     F32_ONE), "needs 8 bytes but its offsets span 4"),
    "huge declared tensor": (_safetensors({"w": {"dtype": "F32", "shape": [10 ** 6, 10 ** 6], "data_offsets": [0, 4]}},
                                          F32_ONE), "beyond the limit"),
    "metadata not strings": (_safetensors({"__metadata__": {"cellzoo": 5}}), "must map names to strings"),
}


@pytest.mark.parametrize("name", list(DAMAGED))
@pytest.mark.parametrize("reader", ["load_weights", "load_model", "read_metadata"])
def test_damaged_safetensors(tmp_path, name, reader):
    data, message = DAMAGED[name]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=message) as info:
        {"load_weights": load_weights, "load_model": load_model, "read_metadata": read_metadata}[reader](path)
    assert "bad.safetensors" in str(info.value)


BAD_METADATA = {
    "no family": ({"config": {}}, "names no known model family \\(family=None"),
    "family a number": ({"family": 5}, "family=5"),
    "family a list": ({"family": ["repsnet"]}, "names no known model family"),
    "unknown family": ({"family": "unet"}, "family='unet'"),
    "not JSON": ("{family: repsnet", "cellzoo metadata is not valid JSON"),
    "a list": ([1, 2], "must be a JSON object"),
    "config a string": ({"family": "repsnet", "config": "big"}, "'config' must be a JSON object"),
    "config with huge sizes": ({"family": "repsnet", "config": {**TINY_REPSNET, "filters": [4096, 8192, 16384, 32768]}},
                               "does not match the repsnet model its metadata describes"),
    "config of another shape": ({"family": "repsnet", "config": {**TINY_REPSNET, "filters": [8, 8, 8, 8]}},
                                "does not match the repsnet model"),
    "config invalid": ({"family": "repsnet", "config": {"variant": "Q"}}, "repsnet"),
}


@pytest.mark.parametrize("name", list(BAD_METADATA))
def test_bad_metadata(tmp_path, name):
    meta, message = BAD_METADATA[name]
    path = _with_metadata(tmp_path, meta)
    started = time.perf_counter()
    with pytest.raises(ValueError, match=message):
        load_weights(path)
    assert time.perf_counter() - started < 30  # nothing of the huge config was built


@pytest.mark.parametrize("change,message", [
    ("int64", "stored as torch.int64, not as floating point"), ("nan", "NaN or infinite"), ("inf", "NaN or infinite"),
    ("-inf", "NaN or infinite")])
def test_weights_that_would_segment_nothing(tmp_path, change, message):
    model = tiny_model()
    state = {k: v.contiguous().clone() for k, v in model.state_dict().items()}
    key = "nucleus_map.0.weight"
    if change == "int64":
        state[key] = state[key].to(torch.int64)
    else:
        state[key][0] = float(change)
    meta = {"family": "repsnet", "config": model.config_dict(), "class_names": model.class_names}
    path = _with_metadata(tmp_path, meta, state)
    with pytest.raises(ValueError, match=f"{key}.*{message}|{message}"):
        load_weights(path)


def test_valid_weights_still_load(tiny_file):
    model, meta = load_weights(tiny_file)
    reference = tiny_model()
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)


# --------------------------------------------------------------------------- .pth that are not checkpoints
def _png_bytes() -> bytes:
    import io

    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


NOT_CHECKPOINTS = {
    "plain text": (b"model weights are at http://example.org\n", "the file is text"),
    "random bytes": (bytes(np.random.default_rng(5).integers(0, 256, 2000, dtype=np.uint8)[1:]) + b"", None),
    "a PNG": (_png_bytes(), "the file is a PNG image"),
    "a JPEG": (b"\xff\xd8\xff\xe0" + b"\0" * 100, "the file is a JPEG image"),
    "empty": (b"", "the file is an empty file"),
    "a truncated zip": (b"PK\x03\x04" + b"\0" * 50, "zip archive is damaged or truncated"),
}


@pytest.mark.parametrize("name", list(NOT_CHECKPOINTS))
@pytest.mark.parametrize("loader", ["safe_torch_load", "load_model"])
def test_not_a_pytorch_checkpoint(tmp_path, name, loader):
    data, message = NOT_CHECKPOINTS[name]
    if name == "random bytes":
        data = b"\x13" + data  # random, but not by chance a pickle's first byte
        message = "is not a PyTorch checkpoint"
    path = tmp_path / "model.pth"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=message) as info:
        (safe_torch_load if loader == "safe_torch_load" else load_model)(path)
    assert "pickled Python objects" not in str(info.value) and "model.pth" in str(info.value)


@pytest.mark.parametrize("members", [1, 3])
def test_zip_bomb_is_refused_before_expansion(tmp_path, members):
    path = tmp_path / "bomb.pth"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for k in range(members):
            with archive.open(f"archive/data/{k}", "w", force_zip64=True) as fh:
                block = b"\0" * (1 << 20)
                for _ in range(64):  # 64 MiB of zeros per member: a few hundred KiB in the file
                    fh.write(block)
    started = time.perf_counter()
    with pytest.raises(ValueError, match="would expand to .* bytes from a .*zip bomb"):
        safe_torch_load(path)
    assert time.perf_counter() - started < 2


def test_a_real_checkpoint_still_loads(tmp_path):
    path = tmp_path / "ok.pth"
    torch.save(tiny_model().state_dict(), path)
    assert "nucleus_map.0.weight" in safe_torch_load(path)


# --------------------------------------------------------------------------- --model paths
@pytest.mark.parametrize("kind", ["folder", "passwd", "fifo", "missing", "text.pth"])
def test_model_argument_that_is_no_model(tmp_path, fifo, capsys, kind):
    if kind == "folder":
        target, message = tmp_path / "models", "is a folder"
        target.mkdir()
    elif kind == "passwd":
        target, message = tmp_path / "etc" / "passwd", "neither a model name .* nor a weights file"
        target.parent.mkdir()
        target.write_text("root:x:0:0:root:/root:/bin/bash\n")
    elif kind == "fifo":
        target, message = fifo("model.safetensors"), "FIFO"
    elif kind == "missing":
        target, message = tmp_path / "nope.safetensors", "does not exist"
    else:
        target, message = tmp_path / "text.pth", "is not a PyTorch checkpoint"
        target.write_text("hello")
    image = tmp_path / "img.png"
    from cellzoo.data import write_image
    write_image(image, np.zeros((32, 32), np.uint8))
    assert main(["segment", str(image), "--model", str(target), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    import re
    assert re.search(message, err), err


# --------------------------------------------------------------------------- user model names
@pytest.fixture
def user_env(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLZOO_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("CELLZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CELLZOO_REGISTRY", raising=False)
    return tmp_path


def test_import_never_replaces_a_user_model_without_overwrite(user_env, tiny_file, capsys):
    assert main(["zoo", "import", str(tiny_file), "--name", "mine"]) == 0
    saved = (user_env / "models" / "mine.safetensors").read_bytes()
    other = user_env / "other.safetensors"
    save_weights(tiny_model(seed=1), other)
    capsys.readouterr()
    assert main(["zoo", "import", str(other), "--name", "mine"]) == 2
    assert "exists already" in capsys.readouterr().err and "--overwrite" in capsys.readouterr().err + "--overwrite"
    assert (user_env / "models" / "mine.safetensors").read_bytes() == saved
    assert main(["zoo", "import", str(other), "--name", "mine", "--overwrite"]) == 0
    assert (user_env / "models" / "mine.safetensors").read_bytes() != saved


@pytest.mark.parametrize("name,message", [("cellzoo-he", "is a model of the zoo"), ("../evil", "is not allowed"),
                                          ("a b", "is not allowed"), ("", "is not allowed")])
def test_import_names(user_env, tiny_file, capsys, name, message):
    assert main(["zoo", "import", str(tiny_file), "--name", name]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"\x89PNG\r\n\x1a\n"])
def test_import_of_files_that_are_no_checkpoints(user_env, capsys, content):
    path = user_env / "x.pth"
    path.write_bytes(content)
    assert main(["zoo", "import", str(path), "--name", "x"]) == 2
    assert "is not a PyTorch checkpoint" in capsys.readouterr().err


# --------------------------------------------------------------------------- downloads without a hash
class _Server:
    """127.0.0.1 server: /good (the weights), /html (a login page), /short (announces more than it sends),
    /tiny (a few bytes), /drip (64 bytes every 0.2 s), /cut (weights cut in half, honest length)."""

    def __init__(self, payload: bytes):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, body: bytes, content_type="application/octet-stream", length=None):
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):  # noqa: N802
                name = self.path.rsplit("/", 2)[-2]
                if name == "good":
                    self._send(payload)
                elif name == "html":
                    self._send(b"<!DOCTYPE html><html><body>Please log in</body></html>" * 40, "text/html")
                elif name == "html-as-binary":
                    self._send(b"<!DOCTYPE html><html><body>Please log in</body></html>" * 40)
                elif name == "short":
                    self._send(payload[: len(payload) // 2], length=len(payload))
                    self.close_connection = True
                elif name == "tiny":
                    self._send(b"ok\n")
                elif name == "cut":
                    self._send(payload[: len(payload) // 2])
                elif name == "drip":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/octet-stream")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    try:
                        for start in range(0, len(payload), 64):
                            self.wfile.write(payload[start:start + 64])
                            self.wfile.flush()
                            time.sleep(0.2)
                    except (BrokenPipeError, ConnectionResetError):
                        pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def weights_server(tiny_file):
    server = _Server(tiny_file.read_bytes())
    yield server
    server.stop()


@pytest.mark.parametrize("route,message", [
    ("html", "sent a web page"), ("html-as-binary", "sent a web page"), ("short", "transfer broke off"),
    ("tiny", "only 3 bytes"), ("cut", "not complete weights"), ("drip", "took longer than 1 s"),
    ("good", None)])
def test_download_without_a_known_hash(user_env, weights_server, monkeypatch, route, message):
    entry = registry_entry("tiny-nohash", filename="tiny.safetensors", sha256=None,
                           urls=[f"{weights_server.url}/{route}/tiny.safetensors"])
    monkeypatch.setenv("CELLZOO_REGISTRY", str(write_registry(user_env / "registry.json", [entry])))
    monkeypatch.setenv("CELLZOO_DOWNLOAD_DEADLINE", "1")
    cache = user_env / "cache"
    if message is None:
        path = zoo.fetch("tiny-nohash", progress=False)
        assert path.read_bytes() == weights_server_payload(user_env, path)
        assert "tiny.safetensors" in json.loads((cache / "recorded_sha256.json").read_text())
        return
    with pytest.raises(zoo.FetchError, match=message):
        zoo.fetch("tiny-nohash", progress=False)
    left = [p.name for p in cache.rglob("*") if p.is_file()] if cache.exists() else []
    assert "tiny.safetensors" not in left and not any(n.endswith(".part") for n in left)
    recorded = cache / "recorded_sha256.json"
    assert not recorded.exists() or "tiny.safetensors" not in json.loads(recorded.read_text())


def weights_server_payload(user_env, path):
    model, _ = load_weights(path)  # what arrived is complete, loadable weights
    assert model.family == "repsnet"
    return path.read_bytes()


def test_download_size_disagreeing_with_the_registry(user_env, weights_server, tiny_file, monkeypatch):
    entry = registry_entry("tiny-size", filename="tiny.safetensors", sha256=None, size=tiny_file.stat().st_size + 1,
                           urls=[f"{weights_server.url}/good/tiny.safetensors"])
    monkeypatch.setenv("CELLZOO_REGISTRY", str(write_registry(user_env / "registry.json", [entry])))
    with pytest.raises(zoo.FetchError, match="not the .* the registry gives"):
        zoo.fetch("tiny-size", progress=False)


@pytest.mark.parametrize("value", ["abc", "-1", "0", "nan"])
def test_download_deadline_setting_is_checked(user_env, weights_server, monkeypatch, value):
    entry = registry_entry("tiny-nohash", filename="tiny.safetensors", sha256=None,
                           urls=[f"{weights_server.url}/good/tiny.safetensors"])
    monkeypatch.setenv("CELLZOO_REGISTRY", str(write_registry(user_env / "registry.json", [entry])))
    monkeypatch.setenv("CELLZOO_DOWNLOAD_DEADLINE", value)
    with pytest.raises((ValueError, zoo.FetchError), match="CELLZOO_DOWNLOAD_DEADLINE"):
        zoo.fetch("tiny-nohash", progress=False)
