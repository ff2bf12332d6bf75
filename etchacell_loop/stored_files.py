"""Where the large artefacts that rows point at live on disk.

Rows hold URIs of masks, models, predictions and subject frames; this turns one back into a path. It
sits apart from the modules that write those files so that readers (the dashboard) need none of
their imports.
"""

from __future__ import annotations

from pathlib import Path


def resolve_uri(uri: str, data_dir: Path) -> Path:
    """A stored file URI as a path: ``file://`` stripped; relative paths are under the data directory."""
    path = Path(uri.removeprefix("file://"))
    return path if path.is_absolute() else data_dir / path
