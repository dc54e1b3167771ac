"""Class-map files: a file that cannot serve as one (missing, a folder, empty, a device, not text) is a one-line
error that says which, and a pipe reads like a file."""

from __future__ import annotations

import os
import threading

import pytest

from tresnet.data.class_mapping import read_class_map
from tresnet.errors import DataError

HINT = r"pass --class-map FILE \(a class name per line in model order, or name,index lines\)"


def _refused(path, match):
    with pytest.raises(DataError, match=match) as info:
        read_class_map(path, 10)
    assert "\n" not in str(info.value)


def test_an_unusable_class_map_says_what_is_wrong(tmp_path):
    _refused(tmp_path / "missing.txt", rf"class map .*missing\.txt does not exist: {HINT}")
    _refused(tmp_path, rf"class map {tmp_path} is a folder, not a file: {HINT}")
    (tmp_path / "blank.txt").write_text("\n  \n")
    _refused(tmp_path / "blank.txt", rf"class map .*blank\.txt is empty: {HINT}")
    (tmp_path / "binary.txt").write_bytes(b"cat\n\xff\xfe\n")
    _refused(tmp_path / "binary.txt", rf"class map .*binary\.txt is not UTF-8 text \(byte 4\): {HINT}")


@pytest.mark.skipif(not os.path.exists(os.devnull) or os.name != "posix", reason="needs /dev/null")
def test_dev_null_is_an_empty_device_not_a_missing_file():
    _refused(os.devnull, rf"class map {os.devnull} is empty \(a device or a pipe, not a regular file\): {HINT}")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_named_pipe_is_read_like_a_file(tmp_path):
    pipe = tmp_path / "classes"
    os.mkfifo(pipe)
    writer = threading.Thread(target=lambda: pipe.write_text("cat\ndog\n"))
    writer.start()
    try:
        assert read_class_map(pipe, 10) == {"cat": 0, "dog": 1}
    finally:
        writer.join(timeout=10)
