from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy.helpers import render_cli


@pytest.fixture
def render(tmp_path):
    """Render into a fresh directory; returns {file name: path}."""

    def _render(*argv: str, out: Path | None = None) -> dict[str, Path]:
        out = out or tmp_path / "k8s"
        assert render_cli([*argv, "--out", str(out)]) == 0
        return {p.name: p for p in sorted(out.glob("*.yaml"))}

    return _render
