"""The HTML reports KFP's UI shows for the tasks (``Output[HTML]``).

KFP's UI serves one file per ``Output[HTML]`` and cannot follow a relative link, so each is the
stage's own page (:mod:`cirl.method.pages`) rendered embedded: every image an inline thumbnail.
The stage's folder keeps the linked page (``report.html``) beside its full-size images.
"""

from __future__ import annotations

from pathlib import Path

from cirl.method.pages import calibration_sentence  # noqa: F401  (read from here before)
from cirl.orchestration.task_base import ArtifactLike, _prepare_output
from cirl.pages import Page


def write_page(artifact: ArtifactLike, page: Page) -> Path:
    """Write ``page`` (made with ``embed=True``) as the KFP HTML artifact."""
    if not page.embed:
        raise ValueError("a KFP HTML artifact is served alone: make the page with embed=True")
    return page.write(_prepare_output(artifact))
