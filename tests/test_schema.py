"""The lineage schema: what registration writes is what the audit and the promotion read."""

from __future__ import annotations

import json

from cirl.lineage.schema import SCORES, Tag, VersionRecord, VersionTestTags


def test_a_version_record_reads_back_what_registration_writes():
    scores = {"f1": 0.61, "ods": 0.7, "ap": 0.8}
    tags = {
        Tag.CHECKPOINT_SHA256: "c" * 64,
        Tag.MODEL_CONFIG: json.dumps({"name": "unet-small"}),
        Tag.DECISION_THRESHOLD: "0.35",
        Tag.GIT_COMMIT: "f" * 40,
        Tag.TORCH: "2.13.0",
        **VersionRecord.test_tags("test", "m" * 64, "/data/prepared", scores),
    }
    record = VersionRecord.from_tags(tags)
    assert record.checkpoint_sha256 == "c" * 64
    assert record.model_config == {"name": "unet-small"}
    assert record.decision_threshold == 0.35
    assert (record.test_split, record.test_manifest_sha256, record.test_data) == (
        "test",
        "m" * 64,
        "/data/prepared",
    )
    assert record.scores == scores  # repr of a float reads back as the same float
    assert (record.git_commit, record.torch, record.python) == ("f" * 40, "2.13.0", None)
    assert VersionTestTags.score("f1") == "test.f1" and "f1" in SCORES


def test_a_foreign_version_reads_as_missing_values_not_an_error():
    record = VersionRecord.from_tags({Tag.MODEL_CONFIG: "not json", "test.f1": "n/a"})
    assert record.model_config is None and record.scores == {"f1": None}
    assert record.test_split == "test" and record.checkpoint_sha256 is None
