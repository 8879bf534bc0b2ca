"""Faults without tracebacks or loss: a replacement killed half-way, two writers of one output,
outputs the operating system refuses (missing folder, full disk)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cirl import staging
from cirl.errors import describe_os_error
from cirl.orchestration.cli import main
from conftest import write_pair


def _previous(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    with staging.staged_dir(out) as tmp:
        (tmp / "model.txt").write_text("previous")
    return out


def _killed_child(script: str, out: Path) -> None:
    """Run ``script`` in a child that replaces ``out`` and SIGKILLs itself on the way."""
    code = textwrap.dedent(
        """
        import os, shutil, signal, sys
        from pathlib import Path
        from cirl import staging
        out = Path(sys.argv[1])
        """
    ) + textwrap.dedent(script)
    done = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True)
    assert done.returncode == -9, done.stderr  # killed, as planned


def test_replacement_is_one_atomic_exchange(tmp_path):
    out = _previous(tmp_path)
    with staging.staged_dir(out) as tmp:
        (tmp / "model.txt").write_text("new")
    assert (out / "model.txt").read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_killed_after_the_exchange_keeps_the_new_output(tmp_path):
    out = _previous(tmp_path)
    _killed_child(
        """
        shutil.rmtree = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
        with staging.staged_dir(out) as tmp:
            (tmp / "model.txt").write_text("new")
        """,
        out,
    )
    assert (out / "model.txt").read_text() == "new"
    leftover = [p for p in tmp_path.iterdir() if p.name != "out"]
    assert len(leftover) == 1 and (leftover[0] / "model.txt").read_text() == "previous"
    staging.clean_stale(tmp_path, "out")
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_killed_between_the_two_renames_restores_the_previous_output(tmp_path):
    """Where no atomic exchange exists: killed after NAME -> .NAME.old, before the new one is
    in. The next writer finds no NAME and puts the previous output back, never deletes it."""
    out = _previous(tmp_path)
    _killed_child(
        """
        staging.exchange = lambda a, b: False
        rename = os.rename
        def killing(a, b):
            rename(a, b)
            if ".old-" in str(b):
                os.kill(os.getpid(), signal.SIGKILL)
        os.rename = killing
        with staging.staged_dir(out) as tmp:
            (tmp / "model.txt").write_text("new")
        """,
        out,
    )
    assert not out.exists()
    assert any(".out.old-" in p.name for p in tmp_path.iterdir())
    restored = staging.clean_stale(tmp_path, "out")
    assert (out / "model.txt").read_text() == "previous"
    assert restored and sorted(os.listdir(tmp_path)) == ["out"]  # the partial one went too
    with staging.staged_dir(out) as tmp:  # and the next replacement works as usual
        (tmp / "model.txt").write_text("next")
    assert (out / "model.txt").read_text() == "next"


def test_a_second_writer_of_one_output_is_refused_with_the_holders_pid(tmp_path, capsys):
    out = tmp_path / "prepared"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(
            """
            import sys, time
            from cirl.staging import output_lock
            with output_lock(sys.argv[1]):
                print("locked", flush=True)
                time.sleep(60)
            """
        ), str(out)],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        for i in range(4):
            write_pair(tmp_path / "raw", f"p{i}", 64, 64, i)
        argv = ["prepare", "--source", str(tmp_path / "raw"), "--format", "folder",
                "--out", str(out), "--tile", "0", "--split", "0.5,0.25,0.25", "-q"]  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"another cirl process (PID {holder.pid})" in err
        assert err.count("\n") == 1 and not out.exists()
    finally:
        holder.kill()
        holder.wait()
    assert main(argv) == 0  # the lock died with its holder
    assert (out / "manifest.csv").is_file()


def test_reading_commands_take_no_lock(tmp_path, capsys):
    out = tmp_path / "run"
    with staging.output_lock(out):  # a pipeline run writing it
        assert main(["pipeline", "show", "--out", str(out)]) == 2
    assert "pipeline_run.json not found" in capsys.readouterr().err


def test_an_output_folder_that_cannot_be_made_is_one_line(tmp_path, capsys):
    for i in range(2):
        write_pair(tmp_path / "raw", f"p{i}", 64, 64, i)
    base = ["prepare", "--source", str(tmp_path / "raw"), "--format", "folder", "--tile", "0"]
    assert main([*base, "--out", "/proc/forbidden"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "/proc" in err and err.count("\n") == 1
    (tmp_path / "file").write_text("")
    assert main([*base, "--out", str(tmp_path / "file" / "out")]) == 2
    err = capsys.readouterr().err
    assert "file" in err and err.count("\n") == 1


def test_os_errors_name_the_path_and_the_fix():
    import errno

    message = describe_os_error(OSError(errno.ENOSPC, "No space left on device", "/data/x.png"))
    assert message.startswith("/data/x.png: No space left on device [ENOSPC]")
    assert "disk is full" in message
    assert "read-only" in describe_os_error(OSError(errno.EROFS, "Read-only", "/ro/a"))


def _mounted(path: Path, options: str):
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    return path


@pytest.fixture
def tiny_disk(tmp_path):
    """A 2 MiB tmpfs (root only; skipped where mounting is not allowed)."""
    mount = _mounted(tmp_path / "disk", "size=2m")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_an_output_on_a_read_only_file_system_is_one_line(tmp_path, capsys):
    mount = _mounted(tmp_path / "ro", "ro,size=1m")
    try:
        for i in range(4):
            write_pair(tmp_path / "raw", f"p{i}", 64, 64, i)
        argv = [
            "prepare",
            "--source",
            str(tmp_path / "raw"),
            "--format",
            "folder",
            "--out",
            str(mount / "prepared"),
            "--tile",
            "0",
            "--split",
            "0.5,0.25,0.25",
        ]
        assert main(argv) == 2  # fmt: skip
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and str(mount) in err
        assert "not writable" in err
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_training_onto_a_full_disk_says_so_and_keeps_nothing_half_written(tmp_path, tiny_disk,
                                                                          capsys):  # fmt: skip
    from cirl.data import prepare

    for i in range(4):
        write_pair(tmp_path / "raw", f"p{i}", 96, 96, i)
    prepare.run(prepare.PrepareConfig(tile=0, split=(0.5, 0.25, 0.25)), tmp_path / "raw",
                "folder", tmp_path / "prep")  # fmt: skip
    out = tiny_disk / "phase1"
    argv = ["train", "--data", str(tmp_path / "prep"), "--out", str(out), "--phase", "1",
            "--epochs", "1", "--steps-per-epoch", "1", "--crop", "64", "--precision", "fp32",
            "--channels-last", "false", "--no-track", "-q"]  # fmt: skip
    start = time.perf_counter()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "disk is full" in err and str(out) in err
    assert time.perf_counter() - start < 120
    written = [p for p in tiny_disk.rglob("*") if ".partial-" in p.name]
    assert written == []  # no half-written checkpoint left on the disk
    assert not (out / "best.pt").exists() and not (out / "last.pt").exists()


def test_predict_onto_a_full_disk_stops_with_every_finished_photo_complete(tmp_path, tiny_disk,
                                                                           capsys):  # fmt: skip
    import cv2
    import numpy as np
    import torch

    from cirl.deploy import export
    from cirl.deploy.predict import OUTPUT_SUFFIXES
    from cirl.models import build_model
    from cirl.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = build_model("unet-small", base_width=4, std_head=False)
    save_checkpoint(tmp_path / "m.pt", {"model": model.state_dict(),
                                        "model_config": dict(model.config)})  # fmt: skip
    export.run(export.ExportConfig(gate=False), tmp_path / "m.pt", tmp_path / "m.onnx")
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):  # noisy photos: their probability maps do not compress
        cv2.imwrite(str(photos / f"p{i}.png"), rng.integers(0, 255, (512, 512, 3), np.uint8))
    out = tiny_disk / "pred"
    argv = ["predict", str(photos), "--model", str(tmp_path / "m.onnx"), "--out", str(out),
            "--engine", "onnx", "--tile", "256", "--overlap", "32", "-q"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: stopped at ") and err.count("\n") == 1, err
    assert "No space left on device" in err and "run the same command again" in err
    names = {f"p{i}" for i in range(8)}
    reported = {n for n in names if (out / f"{n}.json").is_file()}
    assert 0 < len(reported) < 8  # some fitted, the rest did not
    for n in names:  # a photo has all of its outputs (report last) or none
        present = [(out / f"{n}{s}").exists() for s in OUTPUT_SUFFIXES]
        assert all(present) if n in reported else not any(present), (n, present)
    assert not [p for p in out.iterdir() if ".partial-" in p.name]
    if (out / "predictions.json").is_file():  # where it still fitted: it says the run stopped
        import json

        recorded = json.loads((out / "predictions.json").read_text())
        assert "No space left" in recorded["stopped"] and len(recorded["done"]) == len(reported)


def test_audit_of_an_unreachable_store_names_its_own_options(tmp_path, capsys):
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "audit"
    argv = ["audit", "models:/cirl-crack@champion", "--tracking-uri",
            f"http://127.0.0.1:{port}", "--out", str(out)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error: cannot audit models:/cirl-crack@champion")
        and "--tracking-uri" in err
    )
    assert "--track" not in err.replace("--tracking-uri", "") and not out.exists()


def test_preparing_onto_a_full_disk_names_the_output_and_removes_the_partial(
    tmp_path, tiny_disk, capsys
):
    for i in range(6):
        write_pair(tmp_path / "raw", f"p{i}", 700, 700, i)
    out = tiny_disk / "prepared"
    argv = ["prepare", "--source", str(tmp_path / "raw"), "--format", "folder", "--out",
            str(out), "--tile", "0", "--split", "0.5,0.25,0.25", "--png-level", "0",
            "-q"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: writing {out}: No space left on device [ENOSPC]; the disk is full: "
        "free space there, or choose an output on another disk\n"
    )
    assert list(tiny_disk.iterdir()) == []  # the partial folder is gone, nothing else written
