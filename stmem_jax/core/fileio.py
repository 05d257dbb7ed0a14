"""Safe file access for untrusted inputs: paths read from inside files (headers, index CSVs,
manifests) stay inside their folder, one walk over input folders (each real folder once, regular
files only), and writes under a temporary name that leave no partial file behind."""

from __future__ import annotations

import contextlib
import fnmatch
import os
import stat
from collections.abc import Iterator

from stmem_jax.core.signal import RecordError


TEMPORARY = r"\.tmp-\d+(\.\w+)?"  # the suffix of atomic_path's temporary names (a regular expression)


class OutsideFolder(RecordError, ValueError):
    """A path read from a file leads outside the folder it must stay in."""


def _within(real: str, root: str) -> bool:
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def inside(folder: str, name: str, what: str = "path") -> str:
    """The real path of ``name``, a path a file's content gives relative to ``folder``; OutsideFolder
    (its message starts with ``what``) when it leads outside ``folder`` once resolved (absolute,
    ``..``, links)."""
    root = os.path.realpath(folder)
    try:
        real = os.path.realpath(os.path.join(root, name))
    except (TypeError, ValueError) as error:  # not text, an embedded NUL byte
        raise OutsideFolder(f"{what} {name!r} is not a usable path ({error})") from None
    if not _within(real, root):
        raise OutsideFolder(f"{what} {name!r} leads outside {folder}")
    return real


def file_problem(path: str) -> str | None:
    """None when ``path`` is a regular file (after links), else what is wrong: ``missing``, ``is not
    a regular file`` (a folder, FIFO, socket or device: reading one could hang), ``is unreadable (...)``."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError) as error:
        return f"is unreadable ({getattr(error, 'strerror', None) or error})"
    return None if stat.S_ISREG(mode) else "is not a regular file"


def walk(folder: str, names: str | None = None) -> tuple[list[str], list[tuple[str, str]]]:
    """(paths relative to ``folder`` of the regular files under it, sorted; ``(relative path,
    reason)`` of the entries left out). Each real folder is walked once: links to folders are not
    followed (one inside ``folder`` is walked under its real path, one outside is left out), so a
    link loop is harmless. Left out too: files that are not regular (FIFOs, devices: reading one
    hangs), broken links, links to files outside ``folder`` and unreadable folders. Hidden files and
    folders are ignored; ``names`` (a glob on file names) keeps only the files it matches."""
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


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = "") -> Iterator[str]:
    """A temporary name beside ``path`` to write to: renamed to ``path`` when the block ends, removed
    when it fails. An OSError that names no file (a full disk) is raised naming ``path``."""
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
