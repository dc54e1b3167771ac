"""Writing files so that a reader never sees half of one: a temporary file beside the target, then a rename."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path

from tresnet.errors import FileWriteError

Writer = Callable[[str], object]
WriteHook = Callable[[Path, Writer, str], object]

_WRITE_HOOK: ContextVar[WriteHook | None] = ContextVar("tresnet_write_hook", default=None)
# torch.save's C++ writer reports a failed write as a RuntimeError that carries no errno
_TORCH_WRITER_MARKS = ("inline_container.cc", "PytorchStreamWriter", "unexpected pos", "iostream error")
_FULL_DISK_BYTES = 1 << 20  # less free space than this after a failed write: the disk is full
_FIXES = {  # errno -> what to do
    errno.ENOSPC: "free some space or write elsewhere",
    errno.EDQUOT: "free some space or write elsewhere",
    errno.EFBIG: "write elsewhere",
    errno.EIO: "check the disk",
}
_DEFAULT_FIX = "choose a path in a writable folder"
Failure = tuple[str, str]  # (the cause in words, what to do)


def make_readable_by_all(path: str | os.PathLike) -> None:
    """Give ``path`` the permissions of a normal new file (``mkstemp`` makes owner-only files)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


@contextlib.contextmanager
def intercept_writes(hook: WriteHook) -> Iterator[None]:
    """Within the block, :func:`atomic_write` calls ``hook(path, write, tmp_path)`` instead of ``write(tmp_path)``.

    The hook may call ``write``, wrap it, or raise: tests use it to make a disk fill up mid-file.
    """
    token = _WRITE_HOOK.set(hook)
    try:
        yield
    finally:
        _WRITE_HOOK.reset(token)


def _errno_of(error: BaseException) -> int | None:
    """The errno of an ``OSError``, or of a writer that only names it in its message (safetensors: ``os error 28``)."""
    if isinstance(error, OSError) and error.errno:
        return error.errno
    found = re.search(r"os error (\d+)", str(error))
    return int(found.group(1)) if found else None


def _failure(error: BaseException, folder: Path) -> Failure | None:
    """The cause of a failed write into ``folder`` in words (``"no space left on device"``, ``"permission
    denied"``) and what to do, or None when ``error`` is not a failure to write (a bug of the writer stays one)."""
    code = _errno_of(error)
    if code is not None:
        return os.strerror(code).lower(), _FIXES.get(code, _DEFAULT_FIX)
    text = str(error).strip()
    if not (isinstance(error, RuntimeError) and any(mark in text for mark in _TORCH_WRITER_MARKS)):
        return None
    with contextlib.suppress(OSError):
        if shutil.disk_usage(folder).free < _FULL_DISK_BYTES:  # measured while the partial file still fills it
            return os.strerror(errno.ENOSPC).lower(), _FIXES[errno.ENOSPC]
    first_line = text.splitlines()[0][:200] if text else type(error).__name__
    return f"the writer stopped part-way (PyTorch: {first_line})", "check the free space and the disk"


def _write_error(path: Path, failure: Failure) -> FileWriteError:
    reason, fix = failure
    return FileWriteError(f"cannot write {path}: {reason}; {fix}", path=path, reason=reason)


def _temporary_beside(path: Path) -> str:
    """An empty temporary file in ``path``'s folder (created if needed); :class:`FileWriteError` if it cannot be."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _write_error(path, _failure(e, path.parent) or (str(e), _DEFAULT_FIX)) from e
    os.close(fd)
    return tmp


def atomic_write(path: str | os.PathLike, write: Writer) -> Path:
    """Call ``write(tmp_path)``, then rename the temporary file over ``path``; return ``path``.

    The temporary file sits in the target's folder (created if needed), so the rename is atomic:
    ``path`` holds either its old content or the complete new one. If anything fails, the temporary
    file is removed. Raises :class:`FileWriteError` (with ``path`` and ``reason``) when the folder cannot
    be created or written to, or the write fails for want of space or permission (an ``OSError``, the
    safetensors writer's error, torch.save's ``RuntimeError``); any other exception of ``write``
    propagates unchanged.
    """
    path = Path(path).expanduser()
    tmp = _temporary_beside(path)
    try:
        hook = _WRITE_HOOK.get()
        if hook is not None:
            hook(path, write, tmp)
        else:
            write(tmp)
        make_readable_by_all(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        failure = None if isinstance(e, FileWriteError) or not isinstance(e, Exception) else _failure(e, path.parent)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if failure is None:
            raise
        raise _write_error(path, failure) from e
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`); return ``path``."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


__all__ = ["WriteHook", "Writer", "atomic_write", "intercept_writes", "make_readable_by_all", "write_text"]
