"""Atomic writes: a failed write (no space, no permission, torch's writer stopping part-way) is one line that names
the file and the cause; the previous file stays whole and no temporary file is left behind."""

from __future__ import annotations

import errno
import os
import sys

import pytest
import torch

from tresnet.errors import FileWriteError, TResNetError
from tresnet.files import atomic_write, intercept_writes, write_text

TORCH_WRITER_ERROR = "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"


def _fail_mid_file(error: BaseException):
    """A write hook that writes the first bytes of the file, then raises ``error`` (a disk filling up mid-file)."""
    def hook(path, write, tmp):
        with open(tmp, "wb") as f:
            f.write(b"\0" * 4096)
        raise error
    return hook


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("error,reason,fix", [
    (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), "no space left on device", "free some space or write elsewhere"),
    (PermissionError(errno.EACCES, os.strerror(errno.EACCES)), "permission denied",
     "choose a path in a writable folder"),
    (RuntimeError(TORCH_WRITER_ERROR), f"the writer stopped part-way (PyTorch: {TORCH_WRITER_ERROR})",
     "check the free space and the disk"),
])
def test_a_write_that_fails_mid_file_is_one_line_and_keeps_the_old_file(tmp_path, error, reason, fix):
    target = write_text(tmp_path / "report.json", "old")
    with intercept_writes(_fail_mid_file(error)), pytest.raises(FileWriteError) as info:
        write_text(target, "new")
    assert str(info.value) == f"cannot write {target}: {reason}; {fix}"
    assert isinstance(info.value, TResNetError) and info.value.path == target and info.value.reason == reason
    assert target.read_text() == "old" and _leftovers(tmp_path) == []


def test_the_safetensors_writers_error_is_read_for_its_errno(tmp_path):
    from safetensors import SafetensorError

    error = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    with intercept_writes(_fail_mid_file(error)), pytest.raises(FileWriteError, match="no space left on device"):
        atomic_write(tmp_path / "w.safetensors", lambda tmp: None)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE and SIGXFSZ as on Linux")
def test_torch_saves_own_failure_mid_file_is_a_file_write_error(tmp_path):
    """The real C++ writer of torch.save stopped by a file-size limit: it raises a RuntimeError with no errno."""
    import resource
    import signal

    def limited(path, write, tmp):
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
        try:
            write(tmp)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            signal.signal(signal.SIGXFSZ, previous)

    with intercept_writes(limited), pytest.raises(FileWriteError, match=r"cannot write .*resume\.pt: (the writer "
                                                                        r"stopped part-way \(PyTorch: |no space)"):
        atomic_write(tmp_path / "resume.pt", lambda tmp: torch.save({"w": torch.zeros(100_000)}, tmp))
    assert list(tmp_path.iterdir()) == []


def test_a_bug_in_the_writer_is_not_a_write_failure(tmp_path):
    def buggy(tmp):
        open(tmp, "w").write("half")
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        atomic_write(tmp_path / "x.txt", buggy)
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_cannot_be_made_names_the_file(tmp_path):
    blocker = write_text(tmp_path / "file", "not a folder")
    with pytest.raises(FileWriteError, match=r"cannot write .*file/x\.txt: .*; choose a path in a writable folder"):
        write_text(blocker / "x.txt", "text")


def test_the_write_hook_applies_inside_its_block_only(tmp_path):
    seen = []
    with intercept_writes(lambda path, write, tmp: seen.append(path.name) or write(tmp)):
        write_text(tmp_path / "a.txt", "a")
    write_text(tmp_path / "b.txt", "b")
    assert seen == ["a.txt"] and (tmp_path / "a.txt").read_text() == "a" and (tmp_path / "b.txt").read_text() == "b"
