"""Aliases: ``cirl promote`` moves ``champion`` only by a measured margin on the same test data,
each move recorded (a tag of the registered model), so the version behind an alias at any past
time can be named.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from cirl.errors import CirlError
from cirl.lineage.fetch import (
    DEFAULT_MODEL_NAME,
    _alias_version,
    _check_name,
    _client,
    parse_model_uri,
)
from cirl.lineage.schema import Tag, VersionTestTags, tag_float
from cirl.lineage.tracking import TrackingConfig

CHAMPION = "champion"


CHALLENGER = "challenger"


# where versions before 0.9 recorded alias moves (one run each); read, never written
HISTORY_EXPERIMENT = "cirl-model-aliases"


@dataclass(frozen=True)
class PromoteConfig:
    """Parameters of promotion (``params.yaml`` group ``promote``).

    Attributes:
        name: registered model name.
        margin: the version becomes champion when its test F1 >= the champion's F1 - margin;
            otherwise it becomes the challenger.
    """

    name: str = DEFAULT_MODEL_NAME
    margin: float = 0.0

    def __post_init__(self) -> None:
        _check_name(self.name)
        if not 0 <= self.margin < 1:
            raise ValueError(f"key 'margin' must be in [0, 1), got {self.margin}")


@dataclass(frozen=True)
class Promotion:
    """What :func:`promote` decided.

    ``alias`` is ``champion`` or ``challenger`` (the alias the version holds now); ``moved`` is
    False when the version already held it.
    """

    name: str
    version: str
    alias: str
    moved: bool
    previous_champion: str | None
    f1: float
    champion_f1: float | None
    margin: float
    reason: str


@dataclass(frozen=True)
class AliasMove:
    """One recorded alias move (``record``: the registered model's tag that holds it, or the run
    of the ``cirl-model-aliases`` experiment where older versions recorded moves)."""

    model: str
    alias: str
    version: str | None
    previous: str | None
    moved_at: dt.datetime
    reason: str
    f1: float | None
    champion_f1: float | None
    record: str


def _version(client: Any, name: str, version: str | int) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException:
        raise CirlError(
            f"model {name!r} has no version {version} at {client.tracking_uri}; list the versions "
            f"with `mlflow models` / the MLflow UI, or register one with `cirl register`"
        ) from None


def _score(version: Any, uri: str) -> tuple[float, str, str]:
    tags = version.tags
    try:
        return (
            float(tags[VersionTestTags.score("f1")]),
            tags[VersionTestTags.MANIFEST_SHA256],
            tags.get(VersionTestTags.SPLIT, "test"),
        )
    except (KeyError, ValueError):
        raise CirlError(
            f"version {version.version} of {version.name!r} at {uri} has no test scores "
            "(tags test.f1, test.manifest_sha256); register it with `cirl register`, which "
            "records its evaluation"
        ) from None


def promote(
    cfg: PromoteConfig,
    version: str | int,
    tracking: TrackingConfig | None = None,
) -> Promotion:
    """Compare ``version`` with the champion and move ``champion`` or ``challenger`` to it.

    The version becomes champion when there is none, or when its test F1 >= the champion's
    test F1 - ``cfg.margin`` on the same test data; otherwise it becomes the challenger. The
    decision, the reason and both scores are set as version tags (``cirl.promotion_*``) and
    each alias move is recorded (:func:`alias_history`).

    Raises:
        CirlError: when the version or its scores are missing, or the champion was evaluated
            on other test data (another manifest hash or split): not comparable.
    """
    client, uri = _client(tracking)
    new = _version(client, cfg.name, version)
    f1, manifest, split = _score(new, uri)
    champion = _alias_version(client, cfg.name, CHAMPION)
    version = str(new.version)
    if champion is None:
        reason = "first champion: the model had no champion"
        champion_f1 = None
        decision = CHAMPION
    elif str(champion.version) == version:
        reason = "already the champion"
        champion_f1 = f1
        decision = CHAMPION
    else:
        champion_f1, champion_manifest, champion_split = _score(champion, uri)
        if (champion_manifest, champion_split) != (manifest, split):
            raise CirlError(
                f"cannot compare version {version} of {cfg.name!r} with champion version "
                f"{champion.version}: they were scored on different test data (manifest "
                f"{manifest[:12]} split {split} vs {champion_manifest[:12]} split "
                f"{champion_split}); evaluate both checkpoints on the same prepared folder and "
                "split, register the result, then promote"
            )
        threshold = champion_f1 - cfg.margin
        if f1 >= threshold:
            decision = CHAMPION
            reason = (
                f"F1 {f1:.4f} >= champion v{champion.version} F1 {champion_f1:.4f} - margin "
                f"{cfg.margin:g}"
            )
        else:
            decision = CHALLENGER
            reason = (
                f"F1 {f1:.4f} < champion v{champion.version} F1 {champion_f1:.4f} - margin "
                f"{cfg.margin:g}"
            )
    previous = str(champion.version) if champion is not None else None
    holder = _alias_version(client, cfg.name, decision)
    moved = holder is None or str(holder.version) != version
    result = Promotion(
        cfg.name, version, decision, moved, previous, f1, champion_f1, cfg.margin, reason
    )
    for key, value in {
        Tag.PROMOTION_DECISION: decision,
        Tag.PROMOTION_REASON: reason,
        Tag.PROMOTION_F1: repr(f1),
        Tag.PROMOTION_CHAMPION_VERSION: previous or "",
        Tag.PROMOTION_CHAMPION_F1: "" if champion_f1 is None else repr(champion_f1),
        Tag.PROMOTION_MARGIN: repr(cfg.margin),
        Tag.PROMOTION_AT: _now().isoformat(),
    }.items():
        client.set_model_version_tag(cfg.name, version, key, value)
    if moved:
        _move_alias(client, uri, result, decision, version, previous_holder(holder))
    if decision == CHAMPION:
        challenger = _alias_version(client, cfg.name, CHALLENGER)
        if challenger is not None and str(challenger.version) == version:
            _move_alias(client, uri, result, CHALLENGER, None, version)
    return result


def previous_holder(version: Any | None) -> str | None:
    """The version number of an alias holder (None when the alias was free)."""
    return None if version is None else str(version.version)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _move_alias(
    client: Any,
    uri: str,
    promotion: Promotion,
    alias: str,
    version: str | None,
    previous: str | None,
) -> None:
    """Point ``alias`` at ``version`` (None: remove it), recording the move first.

    The record is a tag of the registered model (``cirl.alias_move.<time>-<alias>``, JSON),
    written ``pending`` before the alias moves and ``done`` after (``failed`` if the move
    failed); :func:`alias_history` reads only ``done`` records. The registry holds it, beside
    the model it is about: no experiment of its own.
    """
    from cirl.lineage.tracking import lineage_tags

    name = promotion.name
    moved_at = _now()
    record = {
        "model": name,
        "alias": alias,
        "version": version,
        "previous": previous,
        "moved_at": moved_at.isoformat(),
        "reason": promotion.reason if version else f"version {previous} became {CHAMPION}",
        "f1": promotion.f1,
        "champion_f1": promotion.champion_f1,
        "margin": promotion.margin,
        "lineage": {k: v for k, v in lineage_tags().items() if k.startswith("cirl.")},
    }
    key = f"{Tag.ALIAS_MOVE}{moved_at:%Y%m%dT%H%M%S%fZ}-{alias}"

    def write(state: str) -> None:
        client.set_registered_model_tag(name, key, json.dumps({**record, "state": state}))

    try:
        write("pending")
        if version:
            client.set_registered_model_alias(name, alias, version)
        else:
            client.delete_registered_model_alias(name, alias)
    except Exception as exc:  # registry errors of any kind
        with contextlib.suppress(Exception):
            write("failed")
        raise CirlError(
            f"could not move alias {alias!r} of {name!r} at {uri} "
            f"({type(exc).__name__}: {' '.join(str(exc).split())[:300]})"
        ) from None
    write("done")


def alias_history(
    name: str = DEFAULT_MODEL_NAME,
    tracking: TrackingConfig | None = None,
    alias: str | None = None,
) -> list[AliasMove]:
    """Every recorded move of the aliases of model ``name`` (of ``alias`` only if given), oldest
    first. Moves made outside cirl (MLflow UI, API) are not in it."""
    from mlflow.exceptions import MlflowException

    try:
        _check_name(name)
    except ValueError as exc:
        raise CirlError(str(exc).replace("key 'name'", "the model name")) from None
    client, _ = _client(tracking)
    try:
        tags = client.get_registered_model(name).tags
    except MlflowException:
        tags = {}
    moves = _legacy_moves(client, name)
    for key, text in tags.items():
        if not key.startswith(Tag.ALIAS_MOVE):
            continue
        try:
            entry = json.loads(text)
        except ValueError:
            continue
        if entry.get("state") != "done":
            continue
        moves.append(
            AliasMove(
                model=entry["model"],
                alias=entry["alias"],
                version=entry.get("version") or None,
                previous=entry.get("previous") or None,
                moved_at=dt.datetime.fromisoformat(entry["moved_at"]),
                reason=entry.get("reason", ""),
                f1=entry.get("f1"),
                champion_f1=entry.get("champion_f1"),
                record=key,
            )
        )
    if alias:
        moves = [m for m in moves if m.alias == alias]
    return sorted(moves, key=lambda m: m.moved_at)


def _legacy_moves(client: Any, name: str) -> list[AliasMove]:
    """The moves older versions recorded as runs of the ``cirl-model-aliases`` experiment."""
    experiment = client.get_experiment_by_name(HISTORY_EXPERIMENT)
    if experiment is None:
        return []
    query = f"tags.`{Tag.MODEL}` = '{name}' and attributes.status = 'FINISHED'"
    moves, token = [], None
    while True:
        page = client.search_runs(
            [experiment.experiment_id], query, max_results=1000, page_token=token
        )
        for run in page:
            tags = run.data.tags
            moves.append(
                AliasMove(
                    model=tags[Tag.MODEL],
                    alias=tags[Tag.ALIAS],
                    version=tags.get(Tag.VERSION) or None,
                    previous=tags.get(Tag.PREVIOUS_VERSION) or None,
                    moved_at=dt.datetime.fromisoformat(tags[Tag.MOVED_AT]),
                    reason=tags.get(Tag.REASON, ""),
                    f1=tag_float(tags.get(Tag.F1)),
                    champion_f1=tag_float(tags.get(Tag.CHAMPION_F1)),
                    record=run.info.run_id,
                )
            )
        token = page.token
        if not token:
            return moves


def _as_utc(when: dt.datetime | str) -> dt.datetime:
    if isinstance(when, str):
        try:
            when = dt.datetime.fromisoformat(when.replace("Z", "+00:00"))
        except ValueError:
            raise CirlError(
                f"time {when!r} is not ISO 8601; write it like 2026-01-31T14:00:00Z"
            ) from None
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)


def champion_at(
    name: str,
    when: dt.datetime | str,
    tracking: TrackingConfig | None = None,
) -> str | None:
    """The version that held ``champion`` at ``when`` (naive times are UTC); None before the
    first recorded champion."""
    return holder_at(name, CHAMPION, when, tracking)


def holder_at(
    name: str,
    alias: str,
    when: dt.datetime | str,
    tracking: TrackingConfig | None = None,
) -> str | None:
    """The version that held ``alias`` at ``when`` (naive times are UTC), by the recorded
    moves; None before the first recorded move of that alias."""
    when = _as_utc(when)
    holder = None
    for move in alias_history(name, tracking, alias):
        if move.moved_at > when:
            break
        holder = move.version
    return holder


def version_uri_at(uri: str, when: str, tracking: TrackingConfig | None = None) -> str:
    """``models:/NAME@ALIAS`` as it resolved at ``when``: ``models:/NAME/VERSION``.

    Raises:
        CirlError: for a URI without an alias, or a time before the alias's first move.
    """
    name, alias, _ = parse_model_uri(uri.strip())
    if alias is None:
        raise CirlError(f"--at needs a models:/NAME@ALIAS URI, got {uri!r}")
    version = holder_at(name, alias, when, tracking)
    if version is None:
        history = alias_history(name, tracking, alias)
        first = f"; its first recorded move was at {history[0].moved_at}" if history else ""
        raise CirlError(f"no version of {name!r} held {alias!r} at {when}{first}")
    return f"models:/{name}/{version}"
