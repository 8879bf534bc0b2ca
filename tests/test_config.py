from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from cirl.config import from_mapping, resolve, to_dict
from cirl.data.prepare import PrepareConfig
from cirl.errors import CirlError


@dataclass(frozen=True)
class Example:
    size: int = 4
    rate: float = 0.5
    mode: Literal["a", "b"] = "a"
    ratios: tuple[float, float] = (0.1, 0.9)
    flag: bool = False
    path: Path | None = None


def test_defaults_and_coercion():
    cfg = from_mapping(Example, {"rate": 1, "ratios": "0.2,0.8", "path": "x/y"})
    assert cfg == Example(rate=1.0, ratios=(0.2, 0.8), path=Path("x/y"))
    assert to_dict(cfg)["path"] == "x/y"


def test_unknown_key_is_named_with_valid_keys():
    with pytest.raises(CirlError, match=r"unknown key\(s\) 'sise'.*valid keys are: .*size"):
        from_mapping(Example, {"sise": 3}, "params.yaml:example")


@pytest.mark.parametrize(
    ("key", "value"),
    [("size", "big"), ("size", 2.5), ("flag", "yes"), ("mode", "c"), ("ratios", [1, 2, 3])],
)
def test_wrong_type_names_the_key(key, value):
    with pytest.raises(CirlError, match=f"key '{key}'"):
        from_mapping(Example, {key: value})


def test_range_checks_name_the_key():
    with pytest.raises(CirlError, match="key 'workers'"):
        from_mapping(PrepareConfig, {"workers": 0})


def test_resolve_layers_params_file_and_flags(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("prepare:\n  tile: 256\n  seed: 3\nother:\n  x: 1\n")
    cfg = resolve(PrepareConfig, "prepare", params, {"seed": 7, "workers": None})
    assert (cfg.tile, cfg.seed, cfg.workers) == (256, 7, 1)


def test_resolve_reports_bad_params_file(tmp_path):
    with pytest.raises(CirlError, match="not found"):
        resolve(PrepareConfig, "prepare", tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("prepare:\n  tile: [1\n")
    with pytest.raises(CirlError, match="not valid YAML"):
        resolve(PrepareConfig, "prepare", bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("prepare:\n  tiles: 256\n")
    with pytest.raises(CirlError, match=r"typo.yaml:prepare.*'tiles'"):
        resolve(PrepareConfig, "prepare", typo)


def test_repository_params_file_loads():
    repo = Path(__file__).resolve().parents[1]
    cfg = resolve(PrepareConfig, "prepare", repo / "params.yaml")
    assert cfg.tile == 512 and cfg.split == (0.9, 0.05, 0.05)


def test_every_group_of_the_repository_params_file_matches_its_stage():
    """make run passes params.yaml to every stage: a stale key would stop it half-way."""
    import yaml

    from cirl import audit
    from cirl.data import synth
    from cirl.deploy import export, predict
    from cirl.lineage import registry, tracking
    from cirl.method import evaluate, selection, train
    from cirl.tuning import sweep

    stages = {
        "synth": synth.SynthConfig,
        "prepare": PrepareConfig,
        "train": train.TrainConfig,
        "select": selection.SelectConfig,
        "evaluate": evaluate.EvaluateConfig,
        "export": export.ExportConfig,
        "predict": predict.PredictConfig,
        "tracking": tracking.TrackingConfig,
        "register": registry.RegisterConfig,
        "audit": audit.AuditConfig,
        "sweep": sweep.SweepConfig,
    }
    path = Path(__file__).resolve().parents[1] / "params.yaml"
    groups = yaml.safe_load(path.read_text())
    assert set(groups) == set(stages)
    for group, cls in stages.items():
        cfg = resolve(cls, group, path)
        for key, value in groups[group].items():
            got = getattr(cfg, key)
            assert (list(got) if isinstance(got, tuple) else got) == value, (group, key)
