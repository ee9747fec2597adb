"""Getting weight files: embedded (no network) or downloaded through pooch into the cache.

* cache: ``$CELLZOO_CACHE`` or ``pooch.os_cache("cellzoo")``; base URL override ``$CELLZOO_MIRROR``.
* pooch streams into a temporary file in the cache folder and moves it under the final
  name only after the hash matched, so failed or corrupt downloads leave nothing behind.
* Registry entries whose sha256 is unknown (the authors published none) have it
  recorded at first download in ``<cache>/recorded_sha256.json`` and verified on
  every later use.
* Google Drive links go through :class:`GoogleDriveDownloader`, which gets past the
  "can't scan this file for viruses" confirmation page.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit, urlunsplit

from .._atomic import atomic_write_text
from . import locations
from .locations import cache_dir, mirror_url
from .registry import ModelInfo

RECORDED_HASHES = "recorded_sha256.json"
DEFAULT_TIMEOUT = 30
DEADLINE_ENV = "CELLZOO_DOWNLOAD_DEADLINE"
DEFAULT_DEADLINE = 1800.0
#: no weight file is smaller than this; a shorter body is an error page or a broken transfer
MIN_WEIGHTS_BYTES = 1024


class FetchError(RuntimeError):
    """A weight file could not be obtained; the message says what to do instead."""


# ----------------------------------------------------------------------------- progress
class CallbackProgress:
    """tqdm-like object that pooch's downloaders drive; forwards ``(done_bytes, total_bytes)``.

    Used by napari to show download progress in its own progress bar.
    """

    def __init__(self, callback: Callable[[int, int], Any]) -> None:
        self.callback = callback
        self.total = 0
        self.done = 0

    def update(self, n: int) -> None:
        self.done += int(n)
        # pooch counts whole chunks, so the last one may overshoot
        done = min(self.done, self.total) if self.total else self.done
        self.callback(done, self.total)

    def reset(self) -> None:
        self.done = 0

    def close(self) -> None:
        pass


def _progressbar(progress: bool | Callable[[int, int], Any] | None):
    if callable(progress):
        return CallbackProgress(progress)
    return bool(progress)


# ----------------------------------------------------------------------------- Google Drive
_DRIVE_FILE_ID = re.compile(r"/file/d/([A-Za-z0-9_-]+)")


def is_drive_url(url: str) -> bool:
    host = urlsplit(url).netloc.lower()
    return host.endswith("drive.google.com") or host.endswith("drive.usercontent.google.com")


def drive_direct_url(url: str) -> str:
    """``.../file/d/<id>/view?usp=sharing`` -> ``.../uc?export=download&id=<id>`` (same host)."""
    parts = urlsplit(url)
    match = _DRIVE_FILE_ID.search(parts.path)
    if not match:
        return url
    query = urlencode({"export": "download", "id": match.group(1)})
    return urlunsplit((parts.scheme, parts.netloc, "/uc", query, ""))


class _DownloadFormParser(HTMLParser):
    """Collects the first <form>'s action and its hidden inputs (Drive's confirmation page)."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.inputs: dict[str, str] = {}
        self._in_form = False
        self._done = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form" and not self._done:
            self._in_form = True
            self.action = attrs.get("action") or ""
        elif tag == "input" and self._in_form and attrs.get("name"):
            if (attrs.get("type") or "").lower() in ("hidden", "submit", ""):
                if (attrs.get("type") or "").lower() != "submit":
                    self.inputs[attrs["name"]] = attrs.get("value") or ""

    def handle_endtag(self, tag):
        if tag == "form" and self._in_form:
            self._in_form = False
            self._done = True


class DriveError(Exception):
    """Google Drive answered with a page instead of the file."""


class GoogleDriveDownloader:
    """A pooch downloader for Google Drive share links.

    Large files are not served directly: Drive answers with an HTML page ("Google Drive
    can't scan this file for viruses") holding a form whose hidden inputs (``id``,
    ``export``, ``confirm``, ``uuid``) must be sent back, or (older variant) sets a
    ``download_warning*`` cookie whose value is the ``confirm`` token.  This class follows
    either.  Hand-written because pooch has no Drive support and gdown would be an extra
    dependency for ~40 lines.
    """

    def __init__(self, progressbar: bool | CallbackProgress = False, timeout: float = DEFAULT_TIMEOUT,
                 chunk_size: int = 1 << 20) -> None:
        self.progressbar = progressbar
        self.timeout = timeout
        self.chunk_size = chunk_size

    def __call__(self, url: str, output_file, pooch=None, check_only: bool = False):
        import requests

        with requests.Session() as session:
            response = session.get(drive_direct_url(url), stream=True, timeout=self.timeout)
            response.raise_for_status()
            if _is_html(response):
                next_url, params = self._confirmation(response, session)
                response.close()
                response = session.get(next_url, params=params, stream=True, timeout=self.timeout)
                response.raise_for_status()
                if _is_html(response):
                    raise requests.exceptions.RequestException(
                        f"Google Drive sent a web page instead of the file for {url} even after "
                        "confirming; the file may not be shared publicly or its download quota is "
                        "exceeded - open the link in a browser and download it by hand")
            if check_only:
                response.close()
                return True
            self._stream(response, output_file)
        return None

    @staticmethod
    def _confirmation(response, session) -> tuple[str, dict[str, str]]:
        import requests

        parser = _DownloadFormParser()
        parser.feed(response.text)
        if parser.action is not None and ("confirm" in parser.inputs or "uuid" in parser.inputs):
            return urljoin(response.url, parser.action), parser.inputs
        for name, value in session.cookies.items():
            if name.startswith("download_warning"):
                parts = urlsplit(response.url)
                params = {k: v[0] for k, v in parse_qs(parts.query).items()}
                params["confirm"] = value
                return urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")), params
        raise requests.exceptions.RequestException(
            f"Google Drive sent a web page without a download form for {response.url}; the file "
            "may have been removed, not be shared publicly, or its download quota is exceeded")

    def _stream(self, response, output_file) -> None:
        stream_response(response, output_file, self.progressbar, self.chunk_size)


def download_deadline() -> float:
    """Seconds a whole download may take (``CELLZOO_DOWNLOAD_DEADLINE``, default 1800): the per-read
    timeout alone lets a server that drips a few bytes every second hold a download for ever."""
    from ..data.validate import finite_number

    text = os.environ.get(DEADLINE_ENV, "").strip()
    if not text:
        return DEFAULT_DEADLINE
    return float(finite_number(text, DEADLINE_ENV, minimum=0, exclusive_minimum=True))


def stream_response(response, output_file, progressbar, chunk_size: int = 1 << 20) -> None:
    """Write a streamed response to ``output_file``: refused when it is a web page, when it takes longer
    than :func:`download_deadline`, or when fewer bytes arrive than its Content-Length announced."""
    import requests

    if _is_html(response):
        raise requests.exceptions.RequestException(
            f"the server sent a web page (Content-Type {response.headers.get('content-type')}) instead of the "
            "file: a login, error or quota page")
    total = int(response.headers.get("content-length", 0) or 0)
    progress = None
    if progressbar is True:
        from tqdm.auto import tqdm

        progress = tqdm(total=total, unit="B", unit_scale=True, ncols=79, leave=True)
    elif progressbar:
        progress = progressbar
        progress.total = total
    deadline = time.monotonic() + download_deadline()
    received = 0
    is_path = not hasattr(output_file, "write")
    fh = open(output_file, "w+b") if is_path else output_file
    try:
        for chunk in _arriving_chunks(response, chunk_size):
            if time.monotonic() > deadline:
                raise requests.exceptions.Timeout(
                    f"the download took longer than {download_deadline():g} s ({received:,} bytes received); "
                    f"the server is too slow. Set {DEADLINE_ENV} to allow more time")
            if chunk:
                fh.write(chunk)
                received += len(chunk)
                if progress is not None:
                    progress.update(len(chunk))
    finally:
        if is_path:
            fh.close()
        if progress is not None:
            progress.close()
    if total and received < total:
        raise requests.exceptions.ChunkedEncodingError(
            f"only {received:,} of the announced {total:,} bytes arrived")


def _arriving_chunks(response, chunk_size: int):
    """The body as it arrives: ``read1`` returns whatever bytes are there (up to ``chunk_size``), so the
    deadline is checked while a server drips; ``iter_content`` would wait for a whole chunk first."""
    import requests
    import urllib3

    raw = response.raw
    if not hasattr(raw, "read1"):  # urllib3 < 2
        yield from response.iter_content(chunk_size=chunk_size)
        return
    while True:
        try:
            data = raw.read1(chunk_size, decode_content=True)
        except urllib3.exceptions.ReadTimeoutError as exc:
            raise requests.exceptions.ReadTimeout(exc) from exc
        except (urllib3.exceptions.ProtocolError, urllib3.exceptions.DecodeError) as exc:
            raise requests.exceptions.ChunkedEncodingError(exc) from exc
        if not data:
            return
        yield data


class HTTPDownloader:
    """A pooch downloader for plain HTTP(S) links, streamed by :func:`stream_response` (overall deadline,
    no web pages, complete bodies only)."""

    def __init__(self, progressbar: bool | CallbackProgress = False, timeout: float = DEFAULT_TIMEOUT,
                 chunk_size: int = 1 << 16) -> None:
        self.progressbar = progressbar
        self.timeout = timeout
        self.chunk_size = chunk_size

    def __call__(self, url: str, output_file, pooch=None, check_only: bool = False):
        import requests

        with requests.get(url, stream=True, timeout=self.timeout) as response:
            response.raise_for_status()
            if check_only:
                return True
            stream_response(response, output_file, self.progressbar, self.chunk_size)
        return None


def _is_html(response) -> bool:
    return "text/html" in response.headers.get("content-type", "").lower()


# ----------------------------------------------------------------------------- hashes
def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _recorded_path(folder: Path) -> Path:
    return folder / RECORDED_HASHES


def recorded_hashes(folder: Path | None = None) -> dict[str, dict[str, Any]]:
    path = _recorded_path(folder or cache_dir())
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise FetchError(f"{path} (hashes recorded at first download) is damaged; delete it and the "
                         "downloaded files next to it, then fetch again") from None
    return data if isinstance(data, dict) else {}


def _record_hash(folder: Path, filename: str, sha256: str, source: str) -> None:
    data = recorded_hashes(folder)
    stat = (folder / filename).stat()
    data[filename] = {"sha256": sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "source": source}
    atomic_write_text(_recorded_path(folder), json.dumps(data, indent=1, sort_keys=True))


def _verify_cached(info: ModelInfo, path: Path) -> bool:
    """True if ``path`` matches the registry hash or the one recorded at first download.

    A file is re-hashed only when its size or modification time changed since it was last
    verified.  Files put into the cache by hand (no hash known or recorded) are accepted and
    their hash is recorded from then on.
    """
    folder = path.parent
    record = recorded_hashes(folder).get(path.name)
    expected = info.sha256 or (record or {}).get("sha256")
    if expected is None:
        _record_hash(folder, path.name, file_sha256(path), "placed in the cache by hand")
        return True
    stat = path.stat()
    if (record is not None and record.get("sha256") == expected and record.get("size") == stat.st_size
            and record.get("mtime_ns") == stat.st_mtime_ns):
        return True  # unchanged since it was verified
    if file_sha256(path) != expected:
        return False
    _record_hash(folder, path.name, expected, (record or {}).get("source", "verified against the registry"))
    return True


# ----------------------------------------------------------------------------- fetching
def embedded_path(info: ModelInfo) -> Path:
    return locations.EMBEDDED_DIR / info.filename


def cached_path(info: ModelInfo) -> Path:
    return cache_dir() / info.filename


def download_urls(info: ModelInfo) -> list[str]:
    mirror = mirror_url()
    if mirror:
        return [f"{mirror}/{info.filename}"]
    return list(info.urls)


def _where_to_get(info: ModelInfo, with_notes: bool = False) -> str:
    text = f"download it from {' or '.join(info.urls)}" if info.urls else "it has no public download link"
    if info.source:
        text += f" (source: {info.source})"
    if with_notes and info.notes:
        text += f"; {info.notes.rstrip('. ')}"
    return text


def fetch_info(info: ModelInfo, progress: bool | Callable[[int, int], Any] = True) -> Path:
    """Return a local path to ``info``'s weight file, downloading it if needed."""
    if info.status == "user" and info.path is not None:
        return Path(info.path)
    if info.embedded:
        path = embedded_path(info)
        if path.is_file():
            return path
        if not (info.sha256 and download_urls(info)):
            raise FileNotFoundError(
                f"the embedded weights of {info.name!r} are missing: {path} does not exist. This "
                "install was built before the weights were trained or without them; reinstall napari-cellzoo "
                "from a release, set CELLZOO_MIRROR to a server that has the file, or train them with "
                "scripts/train_defaults.py.")
        # an install without the embedded files: fetched like any download, its registry sha256 pinned

    import pooch
    import requests

    folder = cache_dir()
    target = folder / info.filename
    if target.is_file():
        if _verify_cached(info, target):
            return target
        if not download_urls(info):
            raise FetchError(
                f"{target} does not match the hash {'in the registry' if info.sha256 else 'recorded at first download'}"
                f" for {info.name!r}; delete it and put the right file there ({_where_to_get(info)})")
        target.unlink()  # corrupt or replaced: download afresh below

    urls = download_urls(info)
    if not urls:
        raise FetchError(
            f"model {info.name!r} needs the file {info.filename!r}, which cannot be downloaded "
            f"automatically: {_where_to_get(info, with_notes=True)}. Put the file in {folder} as "
            f"{info.filename!r} (or import it with `cellzoo zoo import FILE --family {info.family} --name NAME`).")
    known_hash = f"sha256:{info.sha256}" if info.sha256 else None
    failures: list[str] = []
    for url in urls:
        bar = _progressbar(progress)
        if is_drive_url(url):
            downloader = GoogleDriveDownloader(progressbar=bar, timeout=DEFAULT_TIMEOUT)
        else:
            downloader = HTTPDownloader(progressbar=bar, timeout=DEFAULT_TIMEOUT)
        try:
            result = pooch.retrieve(url, known_hash=known_hash, fname=info.filename, path=folder,
                                    downloader=downloader, progressbar=bar)
        except ValueError as exc:  # pooch: hash mismatch (the temporary file is already removed)
            failures.append(f"{url}: the downloaded file's hash does not match the registry "
                            f"(expected sha256 {info.sha256}); it was discarded ({exc})")
            continue
        except requests.exceptions.RequestException as exc:
            failures.append(f"{url}: {_describe_request_error(exc)}")
            continue
        path = Path(result)
        if not info.sha256:
            # no hash to check against: the file must at least be complete weights, or it is not kept
            problem = downloaded_file_problem(path, info)
            if problem:
                path.unlink(missing_ok=True)
                failures.append(f"{url}: {problem}; it was discarded")
                continue
        # pooch checked a known hash already; an unknown one is recorded now (first download)
        _record_hash(folder, path.name, info.sha256 or file_sha256(path), url)
        return path
    raise FetchError(
        f"could not download {info.filename!r} for model {info.name!r}:\n  " + "\n  ".join(failures)
        + f"\nTo install it by hand, {_where_to_get(info)} and put it in {folder} as {info.filename!r}; "
        "or set CELLZOO_MIRROR to a server that has it.")


def downloaded_file_problem(path: Path, info: ModelInfo) -> str | None:
    """What shows a download without a known hash is not the weight file (None when it looks right): a
    size other than the registry's, a tiny body, a web page, or a file its loader would refuse."""
    from .safe_load import check_checkpoint_file
    from .weights import read_safetensors_header

    size = path.stat().st_size
    if info.size and size != int(info.size):
        return f"it has {size:,} bytes, not the {int(info.size):,} the registry gives"
    with open(path, "rb") as fh:
        head = fh.read(512).lstrip().lower()
    if head.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")):
        return "the server sent a web page (a login, error or quota page), not the weights"
    if size < MIN_WEIGHTS_BYTES:
        return f"it has only {size} bytes, too few for model weights"
    try:
        if info.filename.endswith(".safetensors"):
            read_safetensors_header(path)
        else:
            check_checkpoint_file(path)
    except ValueError as exc:
        return f"it is not complete weights ({exc})"
    return None


def _describe_request_error(exc: Exception) -> str:
    import requests

    if isinstance(exc, requests.exceptions.HTTPError) and exc.response is not None:
        return f"the server answered HTTP {exc.response.status_code} {exc.response.reason}"
    if isinstance(exc, requests.exceptions.ConnectionError) and not isinstance(
            exc, requests.exceptions.ChunkedEncodingError):
        return "the server could not be reached (offline, or the server is down)"
    if isinstance(exc, (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError)):
        return "the transfer broke off before the whole file arrived"
    if isinstance(exc, requests.exceptions.Timeout):
        return str(exc) if "took longer" in str(exc) else "the server did not answer in time"
    return str(exc) or type(exc).__name__
