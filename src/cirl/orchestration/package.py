"""The compiled pipeline package: the one shipped with cirl or a file, its stage groups' arguments
from ``params.yaml`` and overrides, the image its tasks run on, and the code version that
keys KFP's cache.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cirl import __version__
from cirl.config import PIPELINE_GROUPS
from cirl.errors import CirlError

STAGE_GROUPS = PIPELINE_GROUPS


def code_version() -> str:
    """``VERSION+HASH``: the cirl version and a hash of the package's source files.

    Recorded by every task and part of KFP's cache key, so cached outputs are reused only for
    the same code (a cluster run passes the image digest instead).
    """
    root = Path(__file__).resolve().parents[1]  # the cirl package, every layer
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:12]}"


def parse_overrides(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["train.lr=0.01", "select.gamma=0.3"]`` -> ``{"train": {"lr": "0.01"}, ...}``.

    Values are parsed as YAML scalars (``0.01`` a number, ``true`` a bool, ``a,b`` a string).

    Raises:
        CirlError: on an item that is not ``GROUP.KEY=VALUE`` or names an unknown group.
    """
    import yaml

    groups: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        group, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise CirlError(f"--set {item!r}: expected GROUP.KEY=VALUE, e.g. train.epochs=5")
        if group not in STAGE_GROUPS:
            raise CirlError(
                f"--set {item!r}: unknown group {group!r}; valid groups are: "
                f"{', '.join(STAGE_GROUPS)}"
            )
        groups.setdefault(group, {})[name.replace("-", "_")] = yaml.safe_load(value)
    return groups


def stage_arguments(
    params: str | os.PathLike | None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    package: str | os.PathLike | None = None,
) -> dict[str, dict[str, Any]]:
    """``{group}_params`` run arguments: each group resolved and checked by its config class.

    Without ``params`` the package's compiled defaults are used; a group named in
    ``overrides`` is those defaults (the dataclass defaults without a ``package``) plus the
    overrides.
    """
    from cirl import config

    arguments: dict[str, dict[str, Any]] = {}
    for group in STAGE_GROUPS:
        given = (overrides or {}).get(group)
        if params is None and not given:
            continue
        cls = config.stage_config(group)
        if params is None and package is not None:
            from cirl.orchestration.tasks import stage_config

            compiled = _package_default(package, f"{group}_params") or {}
            cfg = stage_config(group, {**compiled, **given})
        else:
            cfg = config.resolve(cls, group, params, given)
        arguments[f"{group}_params"] = config.to_dict(cfg)
    check_groups(arguments)
    return arguments


def check_groups(arguments: Mapping[str, Mapping[str, Any]]) -> None:
    """Settings of two groups that cannot run together, refused before any task runs.

    Raises:
        CirlError: a sampled selection (``select.max_tiles`` > 0) with offline selection in
            phase II, which needs every tile's A.
    """
    select, train = arguments.get("select_params") or {}, arguments.get("train_params") or {}
    if int(select.get("max_tiles") or 0) > 0 and train.get("selection") == "offline":
        raise CirlError(
            f"select.max_tiles {select['max_tiles']} scores a sample of the tiles, a report "
            "for train.selection online; train.selection offline trains phase II on every "
            "tile's A: set select.max_tiles 0 (e.g. --set select.max_tiles=0) or "
            "train.selection online"
        )


def default_package() -> Path:
    """The compiled training pipeline to run when none is named: ``pipelines/training.yaml``
    of the checkout in the working directory, else the copy shipped in the package."""
    here = Path("pipelines") / "training.yaml"
    if here.is_file():
        return here
    from importlib.resources import files

    return Path(str(files("cirl.packaged") / "training.yaml"))


def load_package(package: str | os.PathLike) -> dict:
    """The compiled pipeline YAML as a dict (the pipeline spec; a platform spec may follow).

    Raises:
        CirlError: naming the file when it is missing or not a compiled KFP pipeline.
    """
    import yaml

    package = Path(package)
    if not package.is_file():
        raise CirlError(
            f"pipeline package {package} not found; compile it with "
            "`python pipelines/training.py` or pass --package"
        )
    try:
        docs = [d for d in yaml.safe_load_all(package.read_text()) if d]
    except yaml.YAMLError as exc:
        raise CirlError(f"pipeline package {package} is not valid YAML: {exc}") from None
    if not docs or "pipelineInfo" not in docs[0] or "deploymentSpec" not in docs[0]:
        raise CirlError(f"{package} is not a compiled KFP pipeline (no pipelineInfo)")
    return docs[0] | ({"platform_spec": docs[1]} if len(docs) > 1 else {})


def with_image(package: str | os.PathLike, image: str, out: str | os.PathLike) -> Path:
    """Write a copy of ``package`` whose every task runs on ``image``; returns ``out``."""
    import yaml

    package, out = Path(package), Path(out)
    docs = [d for d in yaml.safe_load_all(package.read_text()) if d]
    executors = docs[0]["deploymentSpec"]["executors"]
    for executor in executors.values():
        if "container" in executor:
            executor["container"]["image"] = image
    out.write_text(yaml.safe_dump_all(docs, sort_keys=True))
    return out


def check_image_reference(image: str) -> str | None:
    """A warning when ``image`` is referenced by tag: KFP's cache key holds the reference as
    written, so a re-pushed tag would reuse outputs made by the old image."""
    if "@sha256:" in image:
        return None
    return (
        f"image {image!r} is referenced by tag; on a cluster reference it by digest "
        "(name@sha256:...) so that KFP's cache never reuses outputs of an older image"
    )


def _package_default(package: str | os.PathLike, name: str) -> Any:
    """The compiled default of the pipeline parameter ``name`` (None when it has none)."""
    doc = load_package(package)
    spec = doc.get("root", {}).get("inputDefinitions", {}).get("parameters", {}).get(name, {})
    return spec.get("defaultValue")
