"""Where the project's shipped files are: ``assets/`` at the repository root.

``ATTNVIZ_ASSETS`` (a folder holding ``models/``) overrides it. Lives in ``data`` (the lowest
layer that needs it) so that data, models and the analyses read one location.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def assets_dir() -> Path:
    """``assets/models`` at the repository root (or ``$ATTNVIZ_ASSETS/models``)."""
    env = os.environ.get("ATTNVIZ_ASSETS")
    root = Path(env) if env else Path(__file__).resolve().parents[2] / "assets"
    return root / "models"


def read_manifest(directory: str | Path | None = None) -> dict[str, Any]:
    """The bundled models' manifest: ``{"models": {name: entry, ...}}``."""
    path = Path(directory or assets_dir()) / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"no model manifest at {path}")
    return json.loads(path.read_text())
