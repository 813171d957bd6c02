"""Where the project keeps files it derives itself (tokenizer folder, random metric weights)."""

import os
from pathlib import Path


def cache_dir(name: str) -> Path:
    """$TEXTINV_CACHE/<name>, default ~/.cache/textinv/<name> (respects XDG_CACHE_HOME)."""
    root = os.environ.get("TEXTINV_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "textinv"
    return Path(root) / name
