import numpy as np
import pytest

from cirl.data.bsds import read_mat_mask, read_seg, read_seg_mask
from cirl.errors import CirlError

SEG = """format ascii cr
width 5
height 3
segments 2
data
0 0 0 4
0 1 0 1
1 1 2 3
0 1 4 4
0 2 0 4
"""


def test_seg_parser_hand_example(tmp_path):
    path = tmp_path / "a.seg"
    path.write_text(SEG)
    seg = read_seg(path)
    assert seg.shape == (3, 5)
    assert seg.tolist() == [[0] * 5, [0, 0, 1, 1, 0], [0] * 5]
    assert read_seg_mask(path).sum() == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("width 5\nheight 3\n", "no 'data' line"),
        ("width x\nheight 3\ndata\n", "integer 'width'"),
        ("width 5\nheight 3\ndata\n0 1 2\n", r"a.seg:4: expected"),
        ("width 5\nheight 3\ndata\n1 3 0 1\n", "outside the 5x3 image"),
    ],
)
def test_seg_parser_errors_name_file_and_line(tmp_path, text, message):
    path = tmp_path / "a.seg"
    path.write_text(text)
    with pytest.raises(CirlError, match=message):
        read_seg(path)


def test_mat_reader_rejects_other_files(tmp_path):
    path = tmp_path / "x.mat"
    path.write_bytes(b"garbage")
    with pytest.raises(CirlError, match=r"x.mat: not a BSDS groundTruth"):
        read_mat_mask(path)


@pytest.mark.realdata
def test_seg_matches_mat_on_every_cfd_file(datasets_dir):
    cfd = datasets_dir / "cfd"
    segs = sorted((cfd / "seg").glob("*.seg"))
    assert len(segs) == 118
    for seg_path in segs:
        mat_path = cfd / "groundTruth" / f"{seg_path.stem}.mat"
        full = read_seg(seg_path)
        assert (full >= 0).all(), f"{seg_path}: runs leave pixels uncovered"
        a, b = read_seg_mask(seg_path), read_mat_mask(mat_path)
        assert a.shape == b.shape == (320, 480)
        assert np.array_equal(a, b), seg_path.name
    assert read_seg_mask(cfd / "seg" / "001.seg").sum() == 1831
