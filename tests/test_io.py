"""Atomic writes: results never end half-written, and get the permissions a plain open()/mkdir would."""

import os
import stat

import pytest

from tunebench.io import atomic_dir, atomic_write_json, atomic_write_text


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_writes_follow_the_umask_like_a_plain_open(tmp_path, umask):
    old = os.umask(umask)
    try:
        with open(tmp_path / "plain.txt", "w") as fh:  # what the user's tools expect
            fh.write("x")
        (tmp_path / "plain_dir").mkdir()
        atomic_write_text(tmp_path / "a.txt", "x")
        atomic_write_json(tmp_path / "b.json", {"x": 1})
        with atomic_dir(tmp_path / "adapter") as tmp:
            (tmp / "w.bin").write_bytes(b"1")
    finally:
        os.umask(old)

    def mode(p):
        return stat.S_IMODE(os.stat(p).st_mode)

    assert mode(tmp_path / "a.txt") == mode(tmp_path / "b.json") == mode(tmp_path / "plain.txt")
    assert mode(tmp_path / "adapter") == mode(tmp_path / "plain_dir")
    assert mode(tmp_path / "plain.txt") == 0o666 & ~umask  # independently: the umask applied to 0666
