"""One process of a data-parallel run: what ``torchrun`` starts (:mod:`cirl.method.ddp`)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from cirl.errors import CirlError


def main(argv: list[str] | None = None) -> int:
    """One process of a data-parallel run (what ``torchrun`` starts)."""
    import torch

    from cirl import config
    from cirl.method import train
    from cirl.method.train_config import TrainConfig

    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text())
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    cfg = config.from_mapping(TrainConfig, spec["cfg"], "the data-parallel run")
    try:
        train.run(
            cfg,
            spec["data"],
            spec["out"],
            init=spec["init"],
            ambiguity=spec["ambiguity"],
            resume=spec["resume"],
            progress=spec["progress"],
        )
    except CirlError as exc:
        rank = os.environ.get("RANK", "?")
        print(f"error: (rank {rank}) {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
