"""Where converted models, embeddings and weights are cached: $MIML_CACHE, default ~/.cache/miml-scenes."""

import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("MIML_CACHE", Path.home() / ".cache" / "miml-scenes"))
