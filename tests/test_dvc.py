"""DVC: dvc.yaml mirrors the stages, data.dvc matches the synthetic data, push/pull to S3."""

from __future__ import annotations

import filecmp
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cirl.orchestration.cli import COMMANDS, build_parser
from cirl.orchestration.pipeline import STAGE_GROUPS
from conftest import REPO
from services import seaweed_s3

# dvc 3.67's own code trips a pygtrie deprecation; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:_NoneStep.value:DeprecationWarning")

STAGES = ["prepare", "train_phase1", "select", "train_phase2", "evaluate", "export"]
RAW = "data/raw/synth"


def _dvc_yaml() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())


def _dvc_env(tmp_path: Path) -> dict[str, str]:
    """No analytics, and no global, system or site state outside ``tmp_path``."""
    return {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "DVC_GLOBAL_CONFIG_DIR": str(tmp_path / "dvc-global"),
        "DVC_SYSTEM_CONFIG_DIR": str(tmp_path / "dvc-system"),
        "DVC_SITE_CACHE_DIR": str(tmp_path / "dvc-site"),
    }


def _dvc(cwd: Path, env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, f"dvc {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _names(entries: list) -> list[str]:
    return [e if isinstance(e, str) else next(iter(e)) for e in entries]


def test_dvc_yaml_mirrors_the_stages():
    stages = _dvc_yaml()["stages"]
    assert list(stages) == STAGES
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    groups = {c.name: c.group for c in COMMANDS}
    parser = build_parser()
    for name, stage in stages.items():
        argv = shlex.split(stage["cmd"])
        assert argv[0] == "cirl", f"stage {name}: cmd must be a cirl subcommand"
        subcommand = argv[1]
        assert subcommand in groups, f"stage {name}: `cirl {subcommand}` does not exist"
        parser.parse_args(argv[1:])  # every flag is a real one (exits on a typo)
        assert argv[argv.index("--params") + 1] == "params.yaml", name
        # params: exactly the subcommand's group of params.yaml
        assert stage["params"] == [groups[subcommand]], name
        assert groups[subcommand] in params, f"params.yaml has no group {groups[subcommand]}"
        assert "src/cirl" in stage["deps"], f"stage {name} must depend on the package source"
        # every output the command is told to write is declared
        out = argv[argv.index("--out") + 1]
        declared = _names(stage.get("outs", []) + stage.get("metrics", []) + stage.get("plots", []))
        assert any(d == out or d.startswith(out + "/") for d in declared), (name, out)
    # every stage of the pipeline but registration (a side effect in the registry, not a
    # reproducible output: run `cirl register` after `dvc repro`); tracking is no stage
    assert {g for s in stages.values() for g in s["params"]} == set(STAGE_GROUPS) - {
        "tracking",
        "register",
    }
    assert "runs/dvc/eval/metrics.json" in _names(stages["evaluate"]["metrics"])
    assert "runs/dvc/eval/pr_curve.csv" in _names(stages["evaluate"]["plots"])
    for phase in ("train_phase1", "train_phase2"):
        assert f"runs/dvc/{phase[-6:]}/history.json" in _names(stages[phase]["plots"])
    # runs/ is git-ignored: metrics and plots must be cached, or `dvc exp show` cannot read
    # them for past commits and experiments
    for stage in stages.values():
        for entry in (*stage.get("metrics", []), *stage.get("plots", [])):
            options = next(iter(entry.values())) if isinstance(entry, dict) else {}
            assert options.get("cache", True), f"{entry}: keep metrics and plots cached"


@pytest.fixture
def dvc_api_env(tmp_path, monkeypatch):
    """The same isolation as :func:`_dvc_env` for DVC's Python API in this process."""
    for key, value in _dvc_env(tmp_path).items():
        if key.startswith("DVC_"):
            monkeypatch.setenv(key, value)


def test_dvc_loads_the_pipeline_as_one_chain(tmp_path, dvc_api_env):
    """DVC itself accepts dvc.yaml and data.dvc and links them into the expected DAG."""
    from dvc.repo import Repo

    for name in ("dvc.yaml", "data.dvc", "params.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    Repo.init(tmp_path, no_scm=True)
    with Repo(tmp_path) as repo:
        graph = repo.index.graph
        names = {s: Path(s.addressing.split(":")[-1]).name for s in graph.nodes}
        # networkx edges point from a stage to the stage it depends on
        edges = {(names[a], names[b]) for a, b in graph.edges}
    assert set(names.values()) == {"data.dvc", *STAGES}
    for upstream, downstream in [
        ("data.dvc", "prepare"),
        ("prepare", "train_phase1"),
        ("train_phase1", "select"),
        ("select", "train_phase2"),
        ("train_phase1", "train_phase2"),
        ("train_phase2", "evaluate"),
        ("train_phase2", "export"),
    ]:
        assert (downstream, upstream) in edges, f"{downstream} does not depend on {upstream}"


def test_data_dvc_tracks_the_raw_folder():
    outs = yaml.safe_load((REPO / "data.dvc").read_text())["outs"]
    assert len(outs) == 1 and outs[0]["path"] == RAW and outs[0]["md5"].endswith(".dir")
    assert _names(_dvc_yaml()["stages"]["prepare"]["deps"])[0] == RAW


def test_synth_is_byte_deterministic(tmp_path):
    args = ["--n", "2", "--width", "320", "--height", "240", "--seed", "7"]
    for name, workers in (("a", "1"), ("b", "2")):
        out = str(tmp_path / name)
        subprocess.run(
            [sys.executable, "-m", "cirl", "synth", "--out", out, *args, "--workers", workers],
            check=True,
            capture_output=True,
            timeout=120,
        )
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.*"))
    assert len(files) == 5  # 2 photos, 2 masks, the card
    # the card records the worker count, the only allowed difference
    images = [str(f) for f in files if f.suffix in (".jpg", ".png")]
    _, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", images, False)
    assert not mismatch and not errors, mismatch + errors


def test_data_dvc_md5_matches_a_fresh_synth(tmp_path, dvc_api_env, monkeypatch):
    """`cirl synth --params params.yaml` on this machine gives exactly the data.dvc dataset.

    If this fails after a deliberate change of the generator or of params.yaml's synth group:
    run `cirl synth --params params.yaml --out data/raw/synth && dvc commit -f data.dvc`,
    commit data.dvc and `dvc push` (docs/data-versioning.md).
    """
    from dvc.repo import Repo

    shutil.copy(REPO / "data.dvc", tmp_path / "data.dvc")
    params, out = str(REPO / "params.yaml"), str(tmp_path / RAW)
    subprocess.run(
        [sys.executable, "-m", "cirl", "synth", "--params", params, "--out", out],
        check=True,
        capture_output=True,
        timeout=300,
    )
    Repo.init(tmp_path, no_scm=True)
    monkeypatch.chdir(tmp_path)  # DVC resolves output paths against the working directory
    with Repo(".") as repo:
        (stage,) = repo.stage.collect("data.dvc")
        out = stage.outs[0]
        assert out.get_hash() == out.hash_info, (
            f"{RAW} made by `cirl synth --params params.yaml` hashes to {out.get_hash().value}, "
            f"data.dvc records {out.hash_info.value}"
        )


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with seaweed_s3(tmp_path_factory.mktemp("seaweed")) as server:
        server.make_bucket("dvc-store")
        yield server


def test_push_pull_round_trip_through_s3(s3, tmp_path):
    repo = tmp_path / "repo"
    data = repo / "data" / "prepared"
    for split in ("images", "masks"):
        (data / split).mkdir(parents=True)
        for i in range(12):
            (data / split / f"t{i:02d}.png").write_bytes(os.urandom(1000 + i))
    (data / "manifest.csv").write_text("tile_id\n" + "".join(f"t{i:02d}\n" for i in range(12)))
    env = {**_dvc_env(tmp_path), **s3.env}
    _dvc(repo, env, "init", "--no-scm")
    _dvc(repo, env, "remote", "add", "-d", "store", "s3://dvc-store/cirl")
    _dvc(repo, env, "remote", "modify", "store", "endpointurl", s3.url)
    # keys in config.local (git-ignored), as documented; the environment would do too
    _dvc(repo, env, "remote", "modify", "--local", "store", "access_key_id", s3.access_key)
    _dvc(repo, env, "remote", "modify", "--local", "store", "secret_access_key", s3.secret_key)
    _dvc(repo, env, "add", "data/prepared")
    _dvc(repo, env, "push")
    listed = s3.client().list_objects_v2(Bucket="dvc-store", Prefix="cirl/")
    assert listed["KeyCount"] == 25 + 1  # 25 files and the directory listing (.dir)

    saved = tmp_path / "saved"
    shutil.copytree(data, saved)
    shutil.rmtree(data)
    shutil.rmtree(repo / ".dvc" / "cache")
    _dvc(repo, env, "pull")
    compare = filecmp.dircmp(saved, data)
    assert not compare.left_only and not compare.right_only
    for sub in ("", "images", "masks"):
        names = sorted(p.name for p in (saved / sub).iterdir() if p.is_file())
        _, mismatch, errors = filecmp.cmpfiles(saved / sub, data / sub, names, shallow=False)
        assert not mismatch and not errors
    assert "in sync" in _dvc(repo, env, "status", "--cloud")
