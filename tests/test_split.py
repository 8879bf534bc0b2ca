import pytest

from cirl.data.split import assign_splits, assign_with_official, parse_ratios, split_counts
from cirl.errors import CirlError


def test_counts_follow_ratios_with_at_least_one_each():
    assert split_counts(100, (0.9, 0.05, 0.05)) == {"train": 90, "val": 5, "test": 5}
    assert split_counts(20, (0.9, 0.05, 0.05)) == {"train": 18, "val": 1, "test": 1}
    assert split_counts(5, (0.9, 0.05, 0.05)) == {"train": 3, "val": 1, "test": 1}
    assert split_counts(5, (1.0, 0.0, 0.0)) == {"train": 5, "val": 0, "test": 0}
    with pytest.raises(CirlError, match="too few"):
        split_counts(2, (0.9, 0.05, 0.05))


def test_assignment_is_deterministic_and_order_free():
    ids = [f"p{i}" for i in range(50)]
    a = assign_splits(ids, (0.9, 0.05, 0.05), seed=1)
    assert a == assign_splits(list(reversed(ids)), (0.9, 0.05, 0.05), seed=1)
    assert a != assign_splits(ids, (0.9, 0.05, 0.05), seed=2)
    assert (
        list(a.values()).count("test") == 3 and list(a.values()).count("val") == 3
    )  # 2.5 rounds up


def test_official_split_wins_and_val_is_carved_from_train():
    official = {f"tr{i}": "train" for i in range(300)} | {f"te{i}": "test" for i in range(237)}
    out, notes = assign_with_official(official, (0.9, 0.05, 0.05), seed=0)
    assert all(out[k] == "test" for k in official if k.startswith("te"))
    val = [k for k, v in out.items() if v == "val"]
    assert len(val) == 16 and all(k.startswith("tr") for k in val)  # round(300 * 5/95)
    assert "no validation part" in notes[-1]
    with_val = {"a": "train", "b": "val", "c": "test"}
    assert assign_with_official(with_val, (0.9, 0.05, 0.05), 0)[0] == with_val


def test_parse_ratios():
    assert parse_ratios("0.8,0.1,0.1") == (0.8, 0.1, 0.1)
    for bad in ("0.8,0.1", "0.9,0.2,0.1", "a,b,c", "0,0.5,0.5", "1.1,-0.05,-0.05"):
        with pytest.raises(CirlError, match="split"):
            parse_ratios(bad)
