"""The I/O layer: every file access to a path a user gives, a local path or an object-store URL
(``gs://bucket/key``; ``s3://`` and any other scheme fsspec knows, with its client installed), and
safe access for untrusted inputs: paths read from inside files (headers, index CSVs, manifests)
stay inside their folder, one walk over input folders (each real folder once, regular files only),
and writes that leave no partial file behind.

URLs go through fsspec (gcsfs for ``gs://``). A bucket is not a file system, and where that matters
this layer says so:

- an object write is atomic (it appears whole when its upload ends), so :func:`open` for writing and
  :func:`atomic_path` write locally and upload at the end (a failed block uploads nothing);
- folders do not exist: :func:`makedirs` only checks that the bucket does; a folder exists when an
  object lies under it;
- :func:`rename` of a folder copies every object, then deletes the sources: not atomic (interrupted,
  both copies may be partial), and it costs a copy of the data;
- there are no links and no file locks.

Configuration, the same for real storage and an emulator (no branch for either): the standard
``STORAGE_EMULATOR_HOST`` (``http://127.0.0.1:PORT``) points every client at a GCS-API server: gcsfs
reads it, tensorstore (orbax's arrays) gets it as ``TENSORSTORE_GCS_HTTP_URL``, and no credentials
are used then; else the clients find Google's application default credentials. orbax's metadata
files go through etils.epath, which is set to use fsspec (``EPATH_USE_TF=false``): TensorFlow's own
``gs://`` file system cannot be pointed at another endpoint. A failed request is retried
``STMEM_STORAGE_RETRIES`` times in all (default 6: waits of about 1, 2, 4, 8, 16 s, so about 35 s
when a server is unreachable; each request also times out: 30 s to connect, 120 s without data);
then the error is one line naming the URL and its cause (:class:`StorageError`)."""

from __future__ import annotations

import contextlib
import fnmatch
import io
import logging
import os
import posixpath
import re
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator

from stmem_jax.core.signal import RecordError

TEMPORARY = r"\.tmp-\d+(\.\w+)?"  # the suffix of atomic_path's temporary names (a regular expression)
_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]+)://")  # a scheme of two letters or more (not a drive letter)
EMULATOR = "STORAGE_EMULATOR_HOST"
RETRIES = int(os.environ.get("STMEM_STORAGE_RETRIES", "6"))

_derived: str | None = None  # the TENSORSTORE_GCS_HTTP_URL this layer set


def configure() -> None:
    """One client configuration for every library, from the environment (at import, and again
    before each use of a URL: a user may set the variable later): etils.epath uses fsspec, and
    ``STORAGE_EMULATOR_HOST`` reaches tensorstore (unless the user set its own variable)."""
    global _derived
    os.environ.setdefault("EPATH_USE_TF", "false")
    host = os.environ.get(EMULATOR)
    if host and os.environ.get("TENSORSTORE_GCS_HTTP_URL") in (None, _derived):
        _derived = os.environ["TENSORSTORE_GCS_HTTP_URL"] = host if "://" in host else f"http://{host}"


configure()


class OutsideFolder(RecordError, ValueError):
    """A path read from a file leads outside the folder it must stay in."""


class StorageError(OSError):
    """An object store refused or could not serve a request; ``str`` is one line: URL and cause."""

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


class MissingObject(StorageError, FileNotFoundError):
    """No object (or bucket) at a URL."""


# -- paths ------------------------------------------------------------------------------------------

def is_url(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an object-store URL (``scheme://...``) rather than a local path."""
    return bool(_URL.match(os.fspath(path)))


def absolute(path: str | os.PathLike) -> str:
    """A local path made absolute; a URL as it is (never a local folder named ``gs:``)."""
    text = os.fspath(path)
    if not is_url(text):
        return os.path.abspath(text)
    configure()
    return text.rstrip("/") if not text.endswith("://") else text


def join(path: str | os.PathLike, *parts: str) -> str:
    """``os.path.join`` for local paths, ``/``-joined for URLs."""
    text = os.fspath(path)
    return posixpath.join(text, *parts) if is_url(text) else os.path.join(text, *parts)


def split(path: str | os.PathLike) -> tuple[str, str]:
    """(parent, name), for local paths and URLs."""
    text = os.fspath(path)
    if is_url(text):
        scheme, rest = text.split("://", 1)
        parent, name = posixpath.split(rest.rstrip("/"))
        return f"{scheme}://{parent}", name
    return os.path.split(text)


def basename(path: str | os.PathLike) -> str:
    """The last name of ``path`` (trailing separators ignored)."""
    text = os.fspath(path)
    return split(text)[1] if is_url(text) else os.path.basename(os.path.normpath(text))


def dirname(path: str | os.PathLike) -> str:
    return split(path)[0]


def relpath(path: str, folder: str) -> str:
    """``path`` relative to ``folder`` (``/``-separated for URLs)."""
    if is_url(path):
        return posixpath.relpath(path.split("://", 1)[1], folder.split("://", 1)[1])
    return os.path.relpath(path, folder)


# -- clients and errors -----------------------------------------------------------------------------

def _client_class():
    """gcsfs's client with this layer's settings: the standard (non-zonal) API, bounded retries and
    timeouts, no credentials with ``STORAGE_EMULATOR_HOST``, no listing cache (another process may
    write the same folder)."""
    import aiohttp
    import gcsfs.core
    from gcsfs.retry import retry_request

    base = gcsfs.core.GCSFileSystem
    quiet = logging.getLogger("gcsfs")  # it logs each failed request with a traceback: the error says it
    if quiet.level == logging.NOTSET:
        quiet.setLevel(logging.CRITICAL)
    bounded = retry_request(retries=max(RETRIES, 1))

    class GCSFileSystem(base):
        protocol = base.protocol
        _request = bounded(base._request.__wrapped__)
        _get_file_request = bounded(base._get_file_request.__wrapped__)

        def __init__(self, *args, token=None, requests_timeout=None, **kwargs):
            if token is None and os.environ.get(EMULATOR):
                token = "anon"
            kwargs.setdefault("use_listings_cache", False)
            super().__init__(*args, token=token, requests_timeout=requests_timeout or aiohttp.ClientTimeout(
                total=None, connect=30, sock_read=120), **kwargs)

    return GCSFileSystem


_REGISTERED = False


def _filesystem(path: str):
    """(the fsspec file system of URL ``path``, its scheme)."""
    global _REGISTERED
    import fsspec

    configure()
    if not _REGISTERED:  # etils.epath (orbax's metadata files) asks fsspec's registry for "gcs": the same client
        with contextlib.suppress(ImportError):
            client = _client_class()
            for name in ("gs", "gcs"):
                fsspec.register_implementation(name, client, clobber=True)
        _REGISTERED = True
    scheme = _URL.match(path).group(1)
    try:
        return fsspec.filesystem(scheme), scheme
    except (ImportError, ValueError) as error:
        raise StorageError(0, f"{scheme}:// is not available ({error})", path) from None


def _cause(error: BaseException) -> str:
    return " ".join(str(error).split())[:300] or type(error).__name__


def _bucket(path: str) -> str:
    return path.split("://", 1)[1].split("/", 1)[0]


@contextlib.contextmanager
def _errors(path: str) -> Iterator[None]:
    """Translates a client's errors about URL ``path`` into one-line :class:`StorageError`s."""
    try:
        yield
    except StorageError:
        raise
    except FileNotFoundError:
        raise MissingObject(2, _missing(path), path) from None
    except Exception as error:  # noqa: BLE001 - classified below, re-raised as it is otherwise
        translated = _classify(path, error)
        if translated is error:
            raise
        raise translated from error


def _missing(path: str) -> str:
    scheme = path.split("://", 1)[0]
    try:
        fs, _ = _filesystem(path)
        bucket_exists = fs.exists(f"{scheme}://{_bucket(path)}")
    except Exception:  # noqa: BLE001 - the first error is the one to report
        bucket_exists = True
    return f"bucket {_bucket(path)} does not exist" if not bucket_exists else "no such object"


def _classify(path: str, error: Exception) -> Exception:
    import aiohttp

    code = getattr(error, "code", None)
    text = _cause(error)
    auth = type(error).__module__.startswith("google.auth") or code == 401
    if auth:
        return StorageError(13, f"no usable credentials ({text}); run `gcloud auth application-default login` "
                                f"or set GOOGLE_APPLICATION_CREDENTIALS", path)
    if code == 403 or text.startswith("Forbidden"):
        return StorageError(13, f"permission denied ({text})", path)
    if isinstance(error, (aiohttp.ClientError, TimeoutError, ConnectionError)):
        endpoint = os.environ.get(EMULATOR) or "the storage service"
        return StorageError(5, f"cannot reach {endpoint} after {RETRIES} attempt(s) ({text})", path)
    if code is not None:
        return StorageError(5, f"request failed ({text})", path)
    return error


# -- queries ----------------------------------------------------------------------------------------

def exists(path: str) -> bool:
    if not is_url(path):
        return os.path.exists(path)
    fs, _ = _filesystem(path)
    with _errors(path):
        return fs.exists(path)


def isdir(path: str) -> bool:
    """A local directory, or a URL with objects under it (a bucket's root when the bucket exists)."""
    if not is_url(path):
        return os.path.isdir(path)
    fs, _ = _filesystem(path)
    with _errors(path):
        return fs.isdir(path)


def isfile(path: str) -> bool:
    if not is_url(path):
        return os.path.isfile(path)
    fs, _ = _filesystem(path)
    with _errors(path):
        return fs.isfile(path)


def size(path: str) -> int:
    if not is_url(path):
        return os.path.getsize(path)
    fs, _ = _filesystem(path)
    with _errors(path):
        return int(fs.size(path))


def version(path: str) -> tuple:
    """What identifies the content of the file at ``path`` (local: modification time and size; an
    object: its generation or checksum and size): a cache key."""
    if not is_url(path):
        info = os.stat(path)
        return info.st_mtime_ns, info.st_size
    fs, _ = _filesystem(path)
    with _errors(path):
        info = fs.info(path)
    return tuple(str(info.get(key)) for key in ("generation", "etag", "md5Hash", "mtime", "size"))


def sizes(paths: Iterable[str]) -> dict[str, int]:
    """``{path: size}`` of those of ``paths`` that are files (or objects): for URLs from one listing
    of their common folder, not a request per object."""
    paths = set(paths)
    urls = sorted(p for p in paths if is_url(p))
    found = {}
    for path in paths - set(urls):
        with contextlib.suppress(OSError):
            if os.path.isfile(path):
                found[path] = os.path.getsize(path)
    if urls:
        scheme = urls[0].split("://", 1)[0]
        common = posixpath.dirname(posixpath.commonprefix([u.split("://", 1)[1] for u in urls]) + "x")
        fs, _ = _filesystem(urls[0])
        with _errors(f"{scheme}://{common}"):
            listing = fs.find(f"{scheme}://{common}", detail=True)
        objects = {f"{scheme}://{key}": int(info.get("size") or 0) for key, info in listing.items()}
        found.update({u: objects[u] for u in urls if u in objects})
    return found


def listdir(path: str) -> list[str]:
    """The names in folder ``path``, sorted."""
    if not is_url(path):
        return sorted(os.listdir(path))
    fs, _ = _filesystem(path)
    with _errors(path):
        return sorted({posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False)} - {""})


def file_problem(path: str) -> str | None:
    """None when ``path`` is a regular file (after links) or an object, else what is wrong:
    ``missing``, ``is not a regular file`` (a folder, FIFO, socket or device: reading one could
    hang), ``is unreadable (...)``."""
    if is_url(path):
        try:
            return None if isfile(path) else "is not a regular file" if isdir(path) else "missing"
        except StorageError as error:
            return f"is unreadable ({error.strerror})"
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError) as error:
        return f"is unreadable ({getattr(error, 'strerror', None) or error})"
    return None if stat.S_ISREG(mode) else "is not a regular file"


# -- untrusted names ---------------------------------------------------------------------------------

def _within(real: str, root: str, sep: str = os.sep) -> bool:
    return real == root or real.startswith(root.rstrip(sep) + sep)


def inside(folder: str, name: str, what: str = "path") -> str:
    """The real path of ``name``, a path a file's content gives relative to ``folder``; OutsideFolder
    (its message starts with ``what``) when it leads outside ``folder`` once resolved (absolute,
    ``..``, links; for URLs, ``..`` and a leading ``/``)."""
    if is_url(folder):
        if not isinstance(name, str) or "\0" in name:
            raise OutsideFolder(f"{what} {name!r} is not a usable path")
        root = folder.rstrip("/")
        scheme, rest = root.split("://", 1)
        real = f"{scheme}://" + posixpath.normpath(posixpath.join(rest, name))
        if name.startswith("/") or not _within(real, root, "/"):
            raise OutsideFolder(f"{what} {name!r} leads outside {folder}")
        return real
    root = os.path.realpath(folder)
    try:
        real = os.path.realpath(os.path.join(root, name))
    except (TypeError, ValueError) as error:  # not text, an embedded NUL byte
        raise OutsideFolder(f"{what} {name!r} is not a usable path ({error})") from None
    if not _within(real, root):
        raise OutsideFolder(f"{what} {name!r} leads outside {folder}")
    return real


def walk(folder: str, names: str | None = None) -> tuple[list[str], list[tuple[str, str]]]:
    """(paths relative to ``folder`` of the regular files under it, sorted; ``(relative path,
    reason)`` of the entries left out). Each real folder is walked once: links to folders are not
    followed (one inside ``folder`` is walked under its real path, one outside is left out), so a
    link loop is harmless. Left out too: files that are not regular (FIFOs, devices: reading one
    hangs), broken links, links to files outside ``folder`` and unreadable folders. Hidden files and
    folders are ignored; ``names`` (a glob on file names) keeps only the files it matches. Under a
    URL: every object below ``folder`` (a bucket has no links)."""
    if is_url(folder):
        return _walk_objects(folder, names), []
    root = os.path.realpath(folder)
    found, skipped = [], []

    def left_out(path: str, reason: str) -> None:
        skipped.append((os.path.relpath(path, folder), reason))

    for top, dirs, files in os.walk(folder, onerror=lambda e: left_out(e.filename, f"unreadable folder ({e.strerror})")):
        kept = []
        for name in sorted(dirs):
            path = os.path.join(top, name)
            if name.startswith("."):
                continue
            if os.path.islink(path):
                if not _within(os.path.realpath(path), root):
                    left_out(path, "a link to a folder outside the input folder (not followed)")
                continue
            kept.append(name)
        dirs[:] = kept
        for name in sorted(files):
            if name.startswith(".") or (names and not fnmatch.fnmatch(name, names)):
                continue
            path = os.path.join(top, name)
            problem = file_problem(path)
            if problem == "missing":
                left_out(path, "a broken link")
            elif problem:
                left_out(path, problem)
            elif os.path.islink(path) and not _within(os.path.realpath(path), root):  # walked folders are real
                left_out(path, "a link to a file outside the input folder")
            else:
                found.append(os.path.relpath(path, folder))
    return sorted(found), skipped


def _walk_objects(folder: str, names: str | None) -> list[str]:
    fs, _ = _filesystem(folder)
    prefix = folder.split("://", 1)[1].rstrip("/") + "/"
    with _errors(folder):
        keys = fs.find(folder)
    found = []
    for key in keys:
        rel = key[len(prefix):] if key.startswith(prefix) else None
        if not rel or any(part.startswith(".") for part in rel.split("/")):
            continue
        if names and not fnmatch.fnmatch(posixpath.basename(rel), names):
            continue
        found.append(rel)
    return sorted(found)


# -- reading and writing -----------------------------------------------------------------------------

@contextlib.contextmanager
def open(path: str, mode: str = "r", **kwargs) -> Iterator:  # noqa: A001 - the layer's open
    """A file object for ``path`` in ``mode`` (``r``, ``rb``, ``w``, ``wb``, ``a``), as a context
    manager. Writing is atomic: a temporary name beside a local file, renamed when the block ends;
    for a URL a local temporary file, uploaded when the block ends; nothing when the block fails.
    ``a`` appends to a local file as ``open`` does (a URL cannot be appended to: an error)."""
    if mode.startswith("r"):
        if not is_url(path):
            with io.open(path, mode, **kwargs) as f:
                yield f
            return
        fs, _ = _filesystem(path)
        with _errors(path):
            f = fs.open(path, "rb")
        try:
            with _errors(path):
                yield f if "b" in mode else io.TextIOWrapper(f, encoding=kwargs.get("encoding") or "utf-8",
                                                             newline=kwargs.get("newline"))
        finally:
            f.close()
        return
    if mode.startswith("a"):
        if is_url(path):
            raise StorageError(95, "an object cannot be appended to", path)
        with io.open(path, mode, **kwargs) as f:
            yield f
        return
    with atomic_path(path) as tmp, io.open(tmp, mode, **kwargs) as f:
        yield f


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def read_text(path: str, encoding: str = "utf-8") -> str:
    with open(path, "r", encoding=encoding) as f:
        return f.read()


def write_bytes(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = "") -> Iterator[str]:
    """A local temporary name to write ``path`` through (for libraries that take a file name): beside
    a local ``path``, renamed to it when the block ends; for a URL, in the system's temporary folder,
    uploaded when the block ends. Removed when the block fails. An OSError that names no file (a
    full disk) is raised naming ``path``."""
    if is_url(path):
        fs, _ = _filesystem(path)
        handle, tmp = tempfile.mkstemp(suffix=f".tmp-{os.getpid()}{suffix}")
        os.close(handle)
        try:
            yield tmp
            with _errors(path):
                fs.put_file(tmp, path)
        finally:
            with contextlib.suppress(OSError):
                os.remove(tmp)
        return
    tmp = f"{path}.tmp-{os.getpid()}{suffix}"
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(error, OSError) and not error.filename:
            raise OSError(error.errno, error.strerror or str(error), path) from error
        raise


@contextlib.contextmanager
def local_copy(*paths: str) -> Iterator[list[str]]:
    """Local file names of ``paths`` for libraries that read only local files (wfdb, ecgdatakit,
    torch.load): local paths as they are; URLs downloaded into one temporary folder under their own
    names (so a header finds the signal files beside it), deleted when the block ends."""
    if not any(is_url(p) for p in paths):
        yield list(paths)
        return
    folder = tempfile.mkdtemp(prefix="stmem-")
    try:
        local = []
        for path in paths:
            if not is_url(path):
                local.append(path)
                continue
            fs, _ = _filesystem(path)
            target = os.path.join(folder, posixpath.basename(path))
            with _errors(path):
                fs.get_file(path, target)
            local.append(target)
        yield local
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- folders -----------------------------------------------------------------------------------------

_BUCKETS: set[str] = set()  # buckets found to exist


def makedirs(path: str) -> None:
    """Creates local folder ``path`` (and its parents); for a URL, checks that its bucket exists
    (folders in a bucket need not be created, and a missing bucket is never created)."""
    if not is_url(path):
        os.makedirs(path, exist_ok=True)
        return
    fs, scheme = _filesystem(path)
    root = f"{scheme}://{_bucket(path)}"
    if root in _BUCKETS:
        return
    with _errors(path):
        found = fs.exists(root)
    if not found:
        raise MissingObject(2, f"bucket {_bucket(path)} does not exist", path)
    _BUCKETS.add(root)


def rmdir(path: str) -> None:
    """Removes an empty local folder; nothing for a URL (a folder without objects does not exist)."""
    if not is_url(path):
        os.rmdir(path)


def remove(path: str) -> None:
    """Deletes the file or object at ``path``."""
    if not is_url(path):
        os.remove(path)
        return
    fs, _ = _filesystem(path)
    with _errors(path):
        fs.rm_file(path)


def rmtree(path: str) -> None:
    """Deletes folder ``path`` with everything under it."""
    if not is_url(path):
        shutil.rmtree(path)
        return
    fs, _ = _filesystem(path)
    with _errors(path):
        fs.rm(path, recursive=True)


def rename(source: str, target: str) -> None:
    """Moves a file or folder: ``os.replace`` locally (atomic); between URLs a copy of every object,
    then the deletion of the sources (not atomic: see the module's docstring)."""
    if not is_url(source) and not is_url(target):
        os.replace(source, target)
        return
    if is_url(source) != is_url(target):
        raise StorageError(18, f"cannot move between local storage and a bucket ({target})", source)
    fs, _ = _filesystem(source)
    with _errors(source):
        if fs.isdir(source):
            fs.copy(source.rstrip("/") + "/", target.rstrip("/") + "/", recursive=True)
            fs.rm(source, recursive=True)
        else:
            fs.copy(source, target)
            fs.rm_file(source)


class LocalMirror:
    """A local folder standing for ``folder``, for writers that append (metrics.jsonl, TensorBoard's
    event files), which an object cannot be: ``folder`` itself when local; for a URL a temporary
    folder, first holding the objects named in ``names`` (to append to), whose new or changed files
    :meth:`sync` uploads (at most every ``interval`` seconds unless forced) and :meth:`close`
    uploads a last time before deleting it."""

    def __init__(self, folder: str, names: Iterable[str] = (), interval: float = 30.0):
        self.folder, self.remote, self.interval = folder, is_url(folder), interval
        self.path = tempfile.mkdtemp(prefix="stmem-mirror-") if self.remote else folder
        self._sent: dict[str, tuple] = {}
        self._last = 0.0
        if self.remote:
            for name in names:
                if exists(join(folder, name)):
                    with local_copy(join(folder, name)) as (copy,):
                        shutil.copyfile(copy, os.path.join(self.path, name))
        else:
            os.makedirs(folder, exist_ok=True)

    def sync(self, force: bool = False) -> None:
        import time

        if not self.remote or (not force and time.monotonic() - self._last < self.interval):
            return
        self._last = time.monotonic()
        fs, _ = _filesystem(self.folder)
        for top, _, files in os.walk(self.path):
            for name in files:
                local = os.path.join(top, name)
                info = os.stat(local)
                if self._sent.get(local) != (info.st_mtime_ns, info.st_size):
                    target = join(self.folder, *os.path.relpath(local, self.path).split(os.sep))
                    with _errors(target):
                        fs.put_file(local, target)
                    self._sent[local] = (info.st_mtime_ns, info.st_size)

    def close(self) -> None:
        if self.remote:
            self.sync(force=True)
            shutil.rmtree(self.path, ignore_errors=True)
