"""Importing a module of the user's own: a method module named on the command line
(``config.method``, ``model.kind``, ``--method``; never one a saved model's files name). A failure there (any exception, a syntax error included) is the user's
module's, not a bug of stmem-jax: :class:`PluginError` names the module and the error in one line
and keeps the traceback lines of the user's own files."""

from __future__ import annotations

import importlib
import os
import traceback
from types import ModuleType

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class PluginError(ValueError):
    """A user's module failed to import: one line (``str()``) and ``trace``, the traceback lines of
    the user's files (the library's and importlib's left out), to print above it."""

    def __init__(self, message: str, trace: str = ""):
        super().__init__(message)
        self.trace = trace


def import_module(name: str, what: str) -> ModuleType:
    """``importlib.import_module(name)``; PluginError ``<what> '<name>': importing its module failed:
    <error>`` when that raises."""
    try:
        return importlib.import_module(name)
    except Exception as error:  # the user's code: whatever it raises
        raise PluginError(f"{what} {name!r}: importing its module failed: {type(error).__name__}: {error}",
                          _own_lines(error)) from error


def _own_lines(error: Exception) -> str:
    """The traceback of ``error`` in the user's files only, and for a syntax error where it is."""
    frames = [frame for frame in traceback.extract_tb(error.__traceback__)
              if not frame.filename.startswith(("<frozen ", PACKAGE_DIR + os.sep))
              and os.path.basename(os.path.dirname(frame.filename)) != "importlib"]
    lines = traceback.format_list(frames)
    if isinstance(error, SyntaxError):
        lines += traceback.format_exception_only(error)[:-1]
    return "".join(lines).rstrip("\n")
