"""Writing files so that a reader never sees half of one: a temporary file beside the target, then a rename."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from tresnet.errors import FileWriteError


def make_readable_by_all(path: str | os.PathLike) -> None:
    """Give ``path`` the permissions of a normal new file (``mkstemp`` makes owner-only files)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call ``write(tmp_path)``, then rename the temporary file over ``path``; return ``path``.

    The temporary file sits in the target's folder (created if needed), so the rename is atomic:
    ``path`` holds either its old content or the complete new one. If ``write`` raises, the
    temporary file is removed and the exception propagates unchanged. Raises :class:`FileWriteError`
    when the folder cannot be created or written to.
    """
    path = Path(path).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise FileWriteError(f"cannot write {path}: {e.strerror or e}; choose a path in a writable folder") from e
    os.close(fd)
    try:
        write(tmp)
        make_readable_by_all(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`); return ``path``."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


__all__ = ["atomic_write", "make_readable_by_all", "write_text"]
