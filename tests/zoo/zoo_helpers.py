"""Helpers for the zoo tests: a real HTTP server on 127.0.0.1, small real models, registries."""
from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cellzoo.models import build_model

TINY_REPSNET = {"variant": "S", "filters": [4, 8, 8, 8], "num_classes": 3,
                "class_names": ["background", "a", "b"]}


class LoopbackServer:
    """Serves files from ``root`` like a download site, plus failure modes and a Google Drive imitation.

    * ``/files/<name>``: the file (404 if absent)
    * ``/truncated/<name>``: announces the full Content-Length, sends half, closes
    * ``/uc?export=download&id=<name>``: Drive's "can't scan for viruses" page, a form with hidden
      ``id/export/confirm/uuid`` inputs pointing at ``/download``
    * ``/uc?id=<name>&cookie=1``: the older variant, a ``download_warning_*`` cookie with the token
    * ``/download?id=<name>&confirm=t&uuid=<uuid>``: the file, only with the right uuid
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        self.uuids: set[str] = set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _send_file(self, path: Path, truncate: bool = False):
                if not path.is_file():
                    self.send_error(404, "Not Found")
                    return
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2] if truncate else data)
                self.wfile.flush()
                if truncate:
                    self.close_connection = True

            def _send_html(self, html: str, cookie: str | None = None):
                body = html.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                if cookie:
                    self.send_header("Set-Cookie", cookie)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):  # noqa: N802
                server.requests.append(self.path)
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                if parts.path.startswith("/files/"):
                    self._send_file(server.root / parts.path[len("/files/"):])
                elif parts.path.startswith("/truncated/"):
                    self._send_file(server.root / parts.path[len("/truncated/"):], truncate=True)
                elif parts.path == "/uc":
                    name = query.get("id", "")
                    if not (server.root / name).is_file():
                        self.send_error(404, "Not Found")
                    elif query.get("confirm") and query["confirm"] == "cookietoken":
                        self._send_file(server.root / name)
                    elif query.get("cookie"):
                        self._send_html("<html><body>Google Drive can't scan this file for viruses."
                                        "</body></html>", cookie="download_warning_1234=cookietoken; Path=/")
                    else:
                        token = uuid.uuid4().hex
                        server.uuids.add(token)
                        self._send_html(
                            "<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head>"
                            "<body><p>Google Drive can't scan this file for viruses.</p>"
                            '<form id="download-form" action="/download" method="get">'
                            '<input type="submit" id="uc-download-link" value="Download anyway">'
                            f'<input type="hidden" name="id" value="{name}">'
                            '<input type="hidden" name="export" value="download">'
                            '<input type="hidden" name="confirm" value="t">'
                            f'<input type="hidden" name="uuid" value="{token}"></form></body></html>')
                elif parts.path == "/download":
                    if query.get("confirm") == "t" and query.get("uuid") in server.uuids:
                        self._send_file(server.root / query.get("id", ""))
                    else:
                        self._send_html("<html><body>Virus scan warning (again)</body></html>")
                else:
                    self.send_error(404, "Not Found")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.running = True

    def stop(self) -> None:
        if self.running:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(timeout=5)
            self.running = False

def tiny_model(seed: int = 0):
    import torch

    torch.manual_seed(seed)
    return build_model("repsnet", TINY_REPSNET).eval()

def registry_entry(name: str, **fields) -> dict:
    entry = {"name": name, "family": "repsnet", "config": dict(TINY_REPSNET),
             "class_names": TINY_REPSNET["class_names"], "class_colors": ["#000000", "#ff0000", "#00ff00"],
             "normalization": {"input": "RGB 0-255"}, "pixel_size_um": 0.5,
             "urls": ["https://example.invalid/weights/" + fields.get("filename", name + ".safetensors")],
             "sha256": None, "size": None, "licence": "CC0-1.0 (test)", "training_data": "none (random)",
             "metrics": {}, "embedded": False, "source": "tests", "filename": name + ".safetensors"}
    entry.update(fields)
    return entry

def write_registry(path: Path, entries: list[dict]) -> Path:
    path.write_text(json.dumps({"schema": 1, "models": entries}))
    return path
