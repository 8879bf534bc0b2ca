"""The pages a person opens: evaluation and selection reports, linked and embedded, looked at in
a real browser (headless Chromium, tests/browser.py)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from browser import look
from cirl.data.prepare import PrepareConfig
from cirl.data.prepare import run as prepare
from cirl.method import evaluate, selection
from cirl.method.pages import evaluation_page, selection_page
from cirl.method.report import select_overlay_names
from cirl.method.trained import trained_as
from cirl.models import build_model
from cirl.models.checkpoint import save_checkpoint
from cirl.pages import Page, rebase

EMPTY_SELECTION = {
    "rule": "variance",
    "threshold": 0.4,
    "marginal_pixels": 900,
    "selected_pixels": 0,
    "selected_fraction": 0.0,
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A prepared set of 6 photos (2 tiles each) whose photo is its own mask, a phase-II
    checkpoint that recorded an empty selection, and its evaluation and selection folders."""
    root = tmp_path_factory.mktemp("reports")
    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (root / "raw" / sub).mkdir(parents=True)
    for i in range(6):
        mask = np.zeros((64, 128), np.uint8)
        for x0 in (0, 64):
            y = int(rng.integers(10, 54))
            mask[y - 1 : y + 2, x0 + 4 : x0 + 60] = 255
        cv2.imwrite(str(root / "raw" / "images" / f"p{i}.png"), cv2.merge([mask] * 3))
        cv2.imwrite(str(root / "raw" / "masks" / f"p{i}.png"), mask)
    prepare(PrepareConfig(tile=64, split=(0.34, 0.33, 0.33)), root / "raw", "folder", root / "prep")
    model = build_model("unet-small", base_width=4, std_head=True)
    payload = {
        "model": model.state_dict(),
        "model_config": dict(model.config),
        "config": {"loss": "cirl", "phase": 2, "selection": "offline", "beta": 0.2},
        "provenance": {"selection": EMPTY_SELECTION},
        "epoch": 2,
    }
    save_checkpoint(root / "model.pt", payload)
    return root


def _shifted(model, image, with_log_var=False):
    """An oracle one pixel off (imperfect, so best and worst differ), variance 0.5 on it."""
    prob = torch.roll(image[:, :1].clone(), shifts=2, dims=2) * 0.9
    if not with_log_var:
        return prob
    return prob, torch.full_like(prob, float(np.log(0.5)))


@pytest.fixture(scope="module")
def evaluation(folders):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("cirl.models.inference.predict_prob", _shifted)
        cfg = evaluate.EvaluateConfig(device="cpu", overlays=2, split="test", calibrate="val")
        evaluate.run(cfg, folders / "prep", folders / "model.pt", folders / "eval")
    return folders / "eval"


@pytest.fixture(scope="module")
def selected(folders):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("cirl.models.inference.predict_prob", _shifted)
        cfg = selection.SelectConfig(device="cpu", gamma=0.4, split="train", overview=2)
        selection.run(cfg, folders / "prep", folders / "model.pt", folders / "select")
    return folders / "select"


def test_page_links_images_or_embeds_them_and_escapes_text(tmp_path):
    picture = np.zeros((20, 2000, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "wide.png"), picture)
    linked = Page("a <b> & c", tmp_path)
    linked.paragraph("<script>alert(1)</script>")
    linked.image(tmp_path / "wide.png", "caption <i>")
    text = linked.render()
    assert '<img src="wide.png"' in text and "<script>alert" not in text
    assert "a &lt;b&gt; &amp; c" in text and "caption &lt;i&gt;" in text
    embedded = Page("t", tmp_path, embed=True)
    embedded.image(tmp_path / "wide.png")
    uri = embedded.render().split('src="', 1)[1].split('"', 1)[0]
    assert uri.startswith("data:image/")
    import base64

    thumb = cv2.imdecode(np.frombuffer(base64.b64decode(uri.split(",", 1)[1]), np.uint8), 1)
    assert thumb.shape[1] == 960  # scaled down to the thumbnail width, aspect kept
    with pytest.raises(Exception, match="missing"):
        linked.image(tmp_path / "none.png")
    # a copy read from another folder keeps its links through <base>
    (tmp_path / "page").mkdir()
    cv2.imwrite(str(tmp_path / "page" / "wide.png"), picture)
    Page("p", tmp_path / "page").write(tmp_path / "page" / "report.html")
    copy = rebase(tmp_path / "page" / "report.html", tmp_path / "out" / "report.html")
    assert '<base href="../page/">' in copy.read_text()


def test_overlay_picks_show_one_tile_per_photo_first():
    rows = [
        {"name": f"{photo}_t{t}", "f1": f1, "crack_pixels": 10}
        for photo, f1s in (("a", (0.1, 0.2, 0.3)), ("b", (0.5, 0.6)), ("c", (0.9,)))
        for t, f1 in enumerate(f1s)
    ]
    groups = {r["name"]: r["name"].split("_")[0] for r in rows}
    plain = select_overlay_names(rows, 2)
    assert [n for s, n in plain.items() if s.startswith("worst")] == ["a_t0", "a_t1"]
    spread = select_overlay_names(rows, 2, groups=groups)
    assert [n for s, n in spread.items() if s.startswith("worst")] == ["a_t0", "b_t0"]
    assert [n for s, n in spread.items() if s.startswith("best")] == ["c_t0", "b_t1"]
    # fewer photos than picks: the rest from photos already shown, still in rank order
    many = select_overlay_names(rows, 4, groups=groups)
    assert [n for s, n in many.items() if s.startswith("worst")] == [
        "a_t0",
        "a_t1",
        "b_t0",
        "c_t0",
    ]


@pytest.mark.parametrize(
    ("train", "selection_record", "cirl", "label_part"),
    [
        ({"loss": "bce"}, None, False, "BCE baseline"),
        ({"loss": "cirl", "phase": 1}, None, False, "phase I"),
        ({"loss": "cirl", "phase": 2, "selection": "online", "lam": 0.3}, None, True, "online"),
        (
            {"loss": "cirl", "phase": 2},
            {**EMPTY_SELECTION, "selected_fraction": 0.03},
            True,
            "3.0%",
        ),
        ({"loss": "cirl", "phase": 2}, EMPTY_SELECTION, False, "empty ambiguous set"),
        ({"loss": "cirl", "phase": 2, "beta": 0.0}, {"selected_fraction": 0.5}, False, "beta = 0"),
    ],
)
def test_trained_as_names_what_the_training_was(train, selection_record, cirl, label_part):
    method = trained_as(train, selection_record)
    assert method.cirl is cirl and label_part in method.label
    plain_bce = train.get("phase") == 2 and not cirl
    assert (method.warning is not None) is plain_bce
    if plain_bce:
        assert "not CIRL's" in method.warning and "set" in method.warning  # the fix is named


def test_selection_overview_has_a_colour_bar_and_says_when_a_is_empty():
    image = np.full((64, 64, 3), 120, np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[40:42] = True
    ring = np.zeros_like(mask)
    ring[37:45] = True
    ring &= ~mask
    variance = np.full((64, 64), 0.1, np.float32)
    none = np.zeros_like(mask)
    empty = selection._overview([(image, mask, variance, none, ring)], "variance", 0.4)
    picked = selection._overview([(image, mask, variance, ring, ring)], "variance", 0.4)
    assert empty.shape == picked.shape == (140, 4 * 64 + 110, 3)  # the bar at the right
    bar = empty[:, -110:]
    assert (bar != 255).any(axis=2).sum() > 500  # the bar and its labels are drawn
    fourth_e, fourth_p = empty[:64, 192:256], picked[:64, 192:256]
    assert (fourth_p[ring] == (0, 0, 255)).all()  # A red
    # empty A: the ring shown (yellow), not the truth again, and a label says so
    assert (fourth_e[ring] == (0, 200, 230)).all()
    assert not (fourth_e[mask] == 255).all()
    label = (fourth_e[:30] == 255).all(axis=2).sum()
    assert label > 10 and (fourth_p[:30] == 255).all(axis=2).sum() == 0


def test_stage_folders_hold_their_page(evaluation, selected):
    summary = json.loads((evaluation / "metrics.json").read_text())
    assert summary["provenance"]["selection"] == EMPTY_SELECTION
    captions = summary["overlays"]
    assert len(captions) == len(list((evaluation / "overlays").iterdir())) == 4
    photos = {c["photo"] for c in captions if c["kind"] == "worst"}
    assert len(photos) == 2  # two worst tiles, from two photos
    for page in (evaluation / "report.html", selected / "report.html"):
        text = page.read_text()
        assert "data:image" not in text and 'src="' in text
    assert 'src="overlays/' in (evaluation / "report.html").read_text()
    assert 'src="overview.png"' in (selected / "report.html").read_text()


def test_reports_open_as_pages_in_a_browser(evaluation, selected, tmp_path):
    """What a person sees: the linked page in its folder, its copy read from another folder
    (as ``cirl pipeline run`` writes OUT/report.html), and the embedded page KFP and MLflow
    serve: a rendered page (not source text), every image loaded, the scores and captions
    visible, and the empty selection said in a red box on both reports."""
    copy = rebase(evaluation / "report.html", tmp_path / "out" / "report.html")
    embedded = evaluation_page(evaluation, embed=True).write(tmp_path / "embedded.html")
    overlays = len(list((evaluation / "overlays").iterdir()))
    for page in (evaluation / "report.html", copy, embedded):
        seen = look(page, tmp_path / f"{page.parent.name}-{page.stem}.png")
        assert (
            seen["contentType"] == "text/html" and seen["title"] == "Evaluation on the test split"
        )
        assert seen["images"] and all(
            i["complete"] and i["width"] > 0 and i["visible"] for i in seen["images"]
        ), seen["images"]
        assert len(seen["images"]) == overlays + 1  # the PR curve and every overlay
        for score in ("per-image F1", "ODS F1", "OIS F1", "AP", "calibrated"):
            assert score in seen["text"], score
        assert len(seen["captions"]) == overlays + 1
        assert any("worst 1: tile" in c and "from photo" in c for c in seen["captions"])
        assert any("phase II trained as plain BCE" in w for w in seen["warnings"])
        assert (tmp_path / f"{page.parent.name}-{page.stem}.png").stat().st_size > 10_000
    assert embedded.stat().st_size < 1_000_000
    sheet = selection_page(selected, embed=True).write(tmp_path / "select.html")
    for page in (selected / "report.html", sheet):
        seen = look(page)
        assert seen["contentType"] == "text/html" and len(seen["images"]) == 1
        assert seen["images"][0]["width"] > 0
        assert "|A| / |M|" in seen["text"]
        if json.loads((selected / "summary.json").read_text())["warnings"]:
            assert seen["warnings"]


def test_a_calibration_that_scores_below_half_is_said():
    from cirl.method.pages import calibration_sentence

    calibration = {"split": "val", "images": 36, "threshold": 0.89, "f1": 0.12,
                   "scored": {"split": "test", "f1": 0.23, "pooled": {"f1": 0.39}}}  # fmt: skip
    worse = calibration_sentence({"f1": 0.33, "threshold_calibration": calibration})
    assert "scores lower on the test split than 0.5 (0.2300 < 0.3300)" in worse
    better = {**calibration, "scored": {"split": "test", "f1": 0.40, "pooled": {"f1": 0.5}}}
    assert "lower" not in calibration_sentence({"f1": 0.33, "threshold_calibration": better})


def test_a_calibration_that_did_not_hold_up_is_said_and_not_used():
    from cirl.method.pages import calibration_sentence

    calibration = {"split": "val", "images": 36, "photos": 3, "threshold": 0.5, "best": 0.89,
                   "adopted": False, "why": "the val split's best (0.89) does not hold up",
                   "f1": 0.30, "scored": {"split": "test", "f1": 0.33, "pooled": {"f1": 0.4}},
                   "best_scored": {"split": "test", "f1": 0.23}}  # fmt: skip
    text = calibration_sentence({"f1": 0.33, "threshold_calibration": calibration})
    assert text.startswith("Decision threshold 0.5, not calibrated: the val split's best (0.89)")
    assert "would score per-image F1 0.2300 against 0.3300" in text
    assert "lower" not in text  # 0.5 is what predict uses: nothing scores below it
