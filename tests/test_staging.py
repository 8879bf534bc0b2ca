import os

import pytest

from cirl.errors import CirlError
from cirl.staging import staged_dir, staged_file


def test_staged_dir_replaces_only_when_complete(tmp_path):
    out = tmp_path / "out"
    with staged_dir(out) as tmp:
        (tmp / "a.txt").write_text("first")
    assert (out / "a.txt").read_text() == "first"
    with pytest.raises(RuntimeError), staged_dir(out) as tmp:
        (tmp / "a.txt").write_text("second")
        raise RuntimeError("interrupted")
    assert (out / "a.txt").read_text() == "first"
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no partial folder left behind
    with staged_dir(out) as tmp:
        (tmp / "b.txt").write_text("third")
    assert sorted(os.listdir(out)) == ["b.txt"]
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_staged_file(tmp_path):
    final = tmp_path / "sub" / "metrics.json"
    with staged_file(final) as tmp:
        tmp.write_text("{}")
    assert final.read_text() == "{}"
    with pytest.raises(ValueError), staged_file(final) as tmp:
        tmp.write_text("half")
        raise ValueError
    assert final.read_text() == "{}"
    assert sorted(os.listdir(final.parent)) == ["metrics.json"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_parent_is_reported(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(CirlError, match="not writable"), staged_dir(locked / "out"):
        pass


def test_output_path_that_is_a_file(tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(CirlError, match="not a folder"), staged_dir(tmp_path / "out"):
        pass


def test_uncreatable_parent_is_reported(tmp_path):
    (tmp_path / "file").write_text("x")
    with (
        pytest.raises(CirlError, match=r"cannot create output .*file is a file, not a folder"),
        staged_dir(tmp_path / "file" / "out"),
    ):
        pass


def test_outputs_get_the_permissions_of_a_plain_create(tmp_path):
    old = os.umask(0o022)
    try:
        with staged_file(tmp_path / "model.onnx") as tmp:
            tmp.write_bytes(b"x")
        with staged_dir(tmp_path / "run") as tmp:
            (tmp / "a").write_text("y")
    finally:
        os.umask(old)
    # tempfile's temporaries are 0600/0700: a team sharing the volume could not read them
    assert (tmp_path / "model.onnx").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "run").stat().st_mode & 0o777 == 0o755
