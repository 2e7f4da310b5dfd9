"""The one exception type for bad input, so every entry point can report it the same way, and the
recognition of a full or read-only disk, which every stage reports as one line too."""

from __future__ import annotations

import errno

STORAGE_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                  errno.EFBIG: "file too large for the device or the process's file-size limit",
                  errno.EROFS: "the file system is read-only"}
_STORAGE_TEXTS = ("no space left", "file too large", "read-only file system", "disk quota", "file write failed")


class InputError(ValueError):
    """Bad input from a user: a file, a name, an id or a request value.

    The message is one line that names the field (or file) and the reason.
    The CLI prints it and exits with code 2; the Triton models return it as an
    error response.
    """


def storage_error(exc: BaseException) -> str | None:
    """A one-line description when ``exc`` means the disk is full or read-only (an OSError with
    such an errno, or a library's wrapping of one: pyarrow, torch and FAISS re-raise it with the
    text only), else None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:  # the error itself or what it wraps
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
            path = exc.filename2 or exc.filename  # a copy's destination, else the file written
            where = f"{path}: " if path else ""
            return f"{where}{STORAGE_ERRNOS[exc.errno]}"
        text = " ".join(str(exc).split())
        if isinstance(exc, (OSError, RuntimeError)) and any(t in text.lower() for t in _STORAGE_TEXTS):
            return text[:300]
        exc = exc.__cause__ or exc.__context__
    return None
