import cv2
import numpy as np
import pytest

from cirl.data.images import ImageReadError, read_image, read_label


def _save(path, array):
    assert cv2.imwrite(str(path), array)
    return path


def test_color_gray_16bit_and_rgba_become_8bit_bgr(tmp_path):
    color = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    assert np.array_equal(read_image(_save(tmp_path / "c.png", color)), color)
    gray = read_image(_save(tmp_path / "g.png", color[:, :, 0]))
    assert gray.shape == (20, 30, 3) and np.array_equal(gray[:, :, 2], color[:, :, 0])
    deep = read_image(_save(tmp_path / "d.png", color[:, :, 0].astype(np.uint16) * 257))
    assert deep.dtype == np.uint8 and np.array_equal(deep[:, :, 0], color[:, :, 0])
    rgba = np.dstack([color, np.full((20, 30), 7, np.uint8)])
    assert np.array_equal(read_image(_save(tmp_path / "a.png", rgba)), color)


def test_truncated_jpeg_and_png_are_named(tmp_path):
    color = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    for ext in (".jpg", ".png"):
        path = _save(tmp_path / f"x{ext}", color)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        with pytest.raises(ImageReadError, match=rf"x\{ext}: .*truncated"):
            read_image(path)


def test_a_file_whose_content_is_not_its_name_says_what_it_holds(tmp_path):
    (tmp_path / "notes.jpg").write_text("inspection notes, not a photo\n")
    with pytest.raises(ImageReadError, match=r"notes\.jpg: not a JPEG image, the file holds text"):
        read_image(tmp_path / "notes.jpg")
    color = np.zeros((8, 8, 3), np.uint8)
    png = _save(tmp_path / "p.png", color)
    (tmp_path / "renamed.jpg").write_bytes(png.read_bytes())
    with pytest.raises(ImageReadError, match="not a JPEG image, the file holds a PNG image"):
        read_image(tmp_path / "renamed.jpg")


def test_corrupt_empty_and_missing_files(tmp_path):
    (tmp_path / "bad.bmp").write_bytes(b"not an image at all")
    with pytest.raises(ImageReadError, match=r"bad\.bmp: not a readable image"):
        read_image(tmp_path / "bad.bmp")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty"):
        read_image(tmp_path / "empty.png")
    with pytest.raises(ImageReadError, match="not found"):
        read_image(tmp_path / "missing.png")


def test_labels_binarise_by_convention(tmp_path):
    m = np.zeros((10, 10), np.uint8)
    m[2:4] = 255
    mask, was_binary = read_label(_save(tmp_path / "a.png", m))
    assert was_binary and mask.sum() == 20
    mask, was_binary = read_label(_save(tmp_path / "b.png", (m > 0).astype(np.uint8)))
    assert was_binary and mask.sum() == 20  # 0/1 labels are not thresholded away
    soft = m.copy()
    soft[5] = 100  # below half range: background
    soft[6] = 200  # above: crack
    mask, was_binary = read_label(_save(tmp_path / "c.png", soft))
    assert not was_binary and mask.sum() == 30
    red = np.zeros((10, 10, 3), np.uint8)
    red[2:4, :, 2] = 255  # a pure red annotation in BGR
    mask, was_binary = read_label(_save(tmp_path / "d.png", red))
    assert was_binary and mask.sum() == 20
