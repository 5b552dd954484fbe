"""List the inputs of a run: files, folders, globs or ``s3://`` prefixes -> manifest entries.

Clip ids are content hashes, so a renamed or re-uploaded file is still recognised as done, and two
identical files are extracted once. To stay cheap on S3 and on multi-GB footage, the hash covers
the file size plus its first and last 4 MiB (read with range requests), not every byte.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

from a2bs.errors import InputError
from a2bs.runtime import storage

ID_SAMPLE_BYTES = 4 << 20
VIDEO_SUFFIXES = {".mp4", ".mov", ".m4v", ".mkv", ".avi", ".webm"}
AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".m4a", ".ogg", ".aac", ".opus"}
MEDIA_SUFFIXES = VIDEO_SUFFIXES | AUDIO_SUFFIXES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ManifestEntry:
    """One input file and the labels it carries."""

    uri: str
    speaker_id: str
    root: str  # the input argument it was found under (paths may not escape it)

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def content_id(uri: str) -> str:
    """16-hex-digit id from size + first and last 4 MiB of the file (local path or URI)."""
    fs, path = storage.filesystem(uri)
    info = fs.get_file_info(path)
    size = info.size or 0
    h = hashlib.sha256(str(size).encode())
    with fs.open_input_file(path) as f:
        h.update(f.read(min(size, ID_SAMPLE_BYTES)))
        if size > ID_SAMPLE_BYTES:
            f.seek(max(ID_SAMPLE_BYTES, size - ID_SAMPLE_BYTES))
            h.update(f.read())
    return h.hexdigest()[:16]


def _speaker_for(file_path: str, root: str) -> str:
    """Speaker id: the folder directly holding the file (the input folder's own name at top level)."""
    parent = PurePosixPath(file_path.replace(os.sep, "/")).parent
    return parent.name or PurePosixPath(root.rstrip("/")).name or "speaker"


def _within(path: str, root: str) -> bool:
    real_root = os.path.realpath(root)
    return os.path.commonpath([os.path.realpath(path), real_root]) == real_root


def list_inputs(inputs: list[str], suffixes: set[str] | None = None) -> tuple[list[ManifestEntry], list[dict]]:
    """Expand inputs into manifest entries.

    Folders and prefixes are searched recursively for media files; a file named explicitly is
    taken whatever its suffix (so a mislabelled file still gets a clear reason later). Symlinks
    that resolve outside the folder they were found in are refused (inputs cannot escape their root).

    Returns:
        (entries sorted by uri, failures as ``{"source", "reason"}`` for inputs that do not exist;
        each is also logged).
    """
    suffixes = suffixes or MEDIA_SUFFIXES
    entries: dict[str, ManifestEntry] = {}
    failures: list[dict] = []

    def add(uri: str, root: str) -> None:
        entries.setdefault(uri, ManifestEntry(uri, _speaker_for(uri, root), root))

    for raw in inputs:
        item = str(raw)
        if storage.is_remote(item):
            files = storage.list_files(item)
            if files:
                for f in files:
                    if PurePosixPath(f).suffix.lower() in suffixes:
                        add(f, item)
            elif storage.exists(item):
                add(item, item)
            else:
                failures.append({"source": item, "reason": "not found"})
            continue
        if any(ch in item for ch in "*?["):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                failures.append({"source": item, "reason": "glob matched no files"})
            for m in matches:
                if os.path.isfile(m) or os.path.islink(m):
                    add(str(Path(m)), str(Path(m).parent))
            continue
        p = Path(item)
        if p.is_dir():
            before = len(entries) + len(failures)
            for f in sorted(p.rglob("*")):
                if f.suffix.lower() not in suffixes or f.name.startswith("."):
                    continue
                if f.exists() and not _within(str(f), str(p)):  # a dangling link is reported later
                    failures.append({"source": str(f), "reason": f"resolves outside the input folder {p}"})
                    continue
                add(str(f), str(p))
            if len(entries) + len(failures) == before:
                failures.append({"source": item, "reason": "is a directory with no media files in it"})
        elif p.exists() or p.is_symlink():
            add(str(p), str(p.parent))
        else:
            failures.append({"source": item, "reason": "not found"})
    for f in failures:  # as the batch loop does for inputs that fail later
        log.error(f"failed: {f['source']}: {f['reason']}")
    return [entries[k] for k in sorted(entries)], failures


def check_entry(entry: ManifestEntry) -> None:
    """Raise InputError if a local entry escapes its root (defence for hand-written manifests)."""
    if not storage.is_remote(entry.uri) and not _within(entry.uri, entry.root):
        raise InputError(entry.uri, f"path escapes its input root {entry.root}")
