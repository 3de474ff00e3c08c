"""Where real datasets are looked for, the optional download, and the error that lists every place tried.

Search order: the ``root`` argument (``--data-root``), each folder of ``$PRUNEKIT_DATA`` (``os.pathsep``
separated), the cache folder ``~/.cache/prunekit/data`` (``$XDG_CACHE_HOME`` respected), then known system
places (Debian's ``dataset-fashion-mnist`` installs ``/usr/share/datasets/fashion-mnist``).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path

from prunekit.errors import DataNotFoundError

log = logging.getLogger(__name__)

# Per-dataset system folders; tests may patch this mapping.
SYSTEM_DIRS: dict[str, list[Path]] = {
    "fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")],
}


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/prunekit/data`` or ``~/.cache/prunekit/data`` (not created here)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "prunekit" / "data"


def search_roots(root: str | os.PathLike | None) -> list[Path]:
    """The general folders to search, in order, without duplicates."""
    roots: list[Path] = []
    if root is not None:
        roots.append(Path(root).expanduser())
    roots += [Path(p).expanduser() for p in os.environ.get("PRUNEKIT_DATA", "").split(os.pathsep) if p]
    roots.append(cache_dir())
    out: list[Path] = []
    for r in roots:
        if r not in out:
            out.append(r)
    return out


def writable_cache_for(source: Path) -> Path:
    """A folder to keep decoded arrays of ``source``: beside it if writable, else the cache folder."""
    if os.access(source.parent, os.W_OK):
        return source.parent
    d = cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    return d


def try_download(name: str, fn: Callable[[Path], None], timeout: float = 10.0) -> str:
    """Run ``fn(cache_dir())`` with a socket timeout so that offline machines fail fast.

    Returns:
        ``""`` on success, otherwise a short description of the failure for the error message.
    """
    target = cache_dir()
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        target.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s into %s", name, target)
        fn(target)
        return ""
    except Exception as e:  # noqa: BLE001 - any network or disk failure ends in DataNotFoundError
        detail = " ".join(str(e).split())  # one line: torchvision's messages span several
        detail = detail if len(detail) <= 160 else detail[:157] + "..."
        return f"download into {target} failed ({type(e).__name__}: {detail})"
    finally:
        socket.setdefaulttimeout(old)


def not_found(name: str, looked: list[str], download_note: str, how: str) -> DataNotFoundError:
    """The error raised when ``name`` is nowhere: every place looked, why no download, how to get it."""
    places = "; ".join(looked)
    return DataNotFoundError(
        f"dataset {name!r} not found. Looked in: {places}. {download_note}. "
        f"To get it: {how}; or point --data-root (or $PRUNEKIT_DATA) at a folder that holds it."
    )
