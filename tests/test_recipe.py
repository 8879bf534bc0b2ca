"""One recipe: the pipeline's tasks, the sweep, ``cirl audit --retrain`` and ``dvc.yaml`` read
the checkpoints ``cirl.method.recipe`` names (select: phase I's last epoch; phase II: phase I's
best; scored: the final training's best).

The sweep's side is proved on a real sweep (``tests/test_sweep.py``: every trial's phase II
records the phase-I checkpoint it started from); the audit's on a real retrain
(``tests/test_audit.py``: weights bit-identical to the pipeline's, which started from
``best.pt``). Here: the names themselves, ``dvc.yaml``, the tasks and :func:`recipe.run`, with
the stages recorded instead of trained.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from cirl.method import recipe

ROOT = Path(__file__).resolve().parents[1]


def test_the_recipe_names_its_checkpoints():
    assert (recipe.SELECT_FROM, recipe.PHASE2_FROM, recipe.SCORED) == (
        "last.pt",
        "best.pt",
        "best.pt",
    )
    assert recipe.phase2_init("p1") == Path("p1/best.pt")
    assert recipe.phase2_init("p1", "last.pt") == Path("p1/last.pt")


def test_dvc_stages_read_the_recipes_checkpoints():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    select = " ".join(stages["select"]["cmd"].split())
    assert f"--checkpoint runs/dvc/phase1/{recipe.SELECT_FROM}" in select
    phase2 = " ".join(stages["train_phase2"]["cmd"].split())
    assert f"--init runs/dvc/phase1/{recipe.PHASE2_FROM}" in phase2
    for name in ("evaluate", "export"):
        cmd = " ".join(stages[name]["cmd"].split())
        assert f"--checkpoint runs/dvc/phase2/{recipe.SCORED}" in cmd, name


class _Artifact(SimpleNamespace):
    pass


def _artifact(path: Path) -> _Artifact:
    path.mkdir(parents=True, exist_ok=True)
    return _Artifact(path=str(path), metadata={}, log_metric=lambda *a: None)


def test_pipeline_tasks_read_the_recipes_checkpoints(tmp_path, monkeypatch):
    from cirl.method import selection, train
    from cirl.orchestration import tasks

    seen = {}

    def fake_train(cfg, data, out, init=None, **kwargs):
        seen["init"] = init
        return SimpleNamespace(
            history=[],
            best_epoch=0,
            best_val_f1=0.0,
            provenance={},
            arithmetic_tags=dict,
        )

    def fake_select(cfg, data, checkpoint, out, **kwargs):
        seen["select"] = checkpoint
        return SimpleNamespace(summary=lambda: {})

    monkeypatch.setattr(train, "run", fake_train)
    monkeypatch.setattr(selection, "run", fake_select)
    phase1 = _artifact(tmp_path / "phase1")
    tasks.train(_artifact(tmp_path / "data"), {}, _artifact(tmp_path / "m"), phase=2, init=phase1)
    tasks.select(_artifact(tmp_path / "data"), phase1, {}, _artifact(tmp_path / "a"))
    assert Path(seen["init"]) == recipe.phase2_init(phase1.path)
    assert Path(seen["select"]) == recipe.selection_checkpoint(phase1.path)


@pytest.mark.parametrize("bce", [False, True])
def test_the_chain_runs_in_order_from_the_named_checkpoints(tmp_path, monkeypatch, bce):
    from cirl.method import evaluate, selection, train

    calls = []

    def fake_train(cfg, data, out, init=None, ambiguity=None, **kwargs):
        calls.append(("train", cfg, init and Path(init).name, ambiguity and Path(ambiguity).name))
        return SimpleNamespace(out=Path(out))

    monkeypatch.setattr(train, "run", fake_train)
    monkeypatch.setattr(
        selection, "run", lambda cfg, d, ckpt, out, **k: calls.append(("select", Path(ckpt).name))
    )
    monkeypatch.setattr(
        evaluate, "run", lambda cfg, d, ckpt, out, **k: calls.append(("evaluate", ckpt)) or {}
    )
    configs = recipe.ChainConfigs(
        final="final", evaluate="eval", phase1=None if bce else "p1", select=None if bce else "s"
    )
    stages = []
    result = recipe.run(configs, tmp_path / "data", tmp_path, on_stage=stages.append)
    final = tmp_path / "phase2" / recipe.SCORED
    if bce:
        assert stages == ["train baseline", "evaluate"]
        assert calls == [("train", "final", None, None), ("evaluate", final)]
    else:
        assert stages == ["train phase 1", "select", "train phase 2", "evaluate"]
        assert calls == [
            ("train", "p1", None, None),
            ("select", recipe.SELECT_FROM),
            ("train", "final", recipe.PHASE2_FROM, "select"),
            ("evaluate", final),
        ]
    assert [s["stage"] for s in result.stages] == stages
    # the alternative is a parameter, not a second copy of the chain
    calls.clear()
    if not bce:
        recipe.run(configs, tmp_path / "data", tmp_path, phase2_from="last.pt")
        assert calls[2] == ("train", "final", "last.pt", "select")
