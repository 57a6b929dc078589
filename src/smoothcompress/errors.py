"""The project's error classes: a user mistake (a bad argument, setting or file) raises one of these.

Every error the library raises on user input derives from :class:`SmoothcompressError`, itself a ``ValueError``
(so ``except ValueError`` keeps catching them). Its message is one line that says what is wrong and what to do.
The command line prints such an error as one line and exits with status 2; any other exception is a bug and keeps
its traceback. The specific classes live beside the code that raises them and derive from this one:
:class:`~smoothcompress.io.CheckpointError`, :class:`~smoothcompress.study.data.DataError`,
:class:`~smoothcompress.accounting.RateUnreachable`, :class:`~smoothcompress.study.training.TrainingDiverged`.
"""

from __future__ import annotations

__all__ = ["SmoothcompressError", "ConfigError", "FileContentError", "first_line"]


class SmoothcompressError(ValueError):
    """A user error: the inputs, not the library, are at fault. The message is one line saying what to do."""


class ConfigError(SmoothcompressError):
    """An argument or setting is invalid: a rate outside [0, 1), an unknown key or name, a shape that does not
    fit, options that contradict each other."""


class FileContentError(SmoothcompressError):
    """A file the user named is not what it should be: corrupt, truncated, or a file of another kind (a model
    file where results rows are expected, a pickle where a safetensors file is expected)."""


def first_line(e: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (at most ``limit`` characters), or its type name when it has none:
    what a one-line error quotes of the error behind it."""
    text = str(e).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    return line[:limit] if limit is not None else line
