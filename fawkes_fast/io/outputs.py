"""Which files to read and where their cloaked copies go (the CLI's file plan)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".heic", ".heif", ".gif", ".bmp", ".tif", ".tiff"}
SUFFIX_OF_FORMAT = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}


@dataclass
class Job:
    source: Path
    output: Path


def expand_inputs(paths) -> list[tuple[Path, Path]]:
    """(file, folder it was found under or None) for files and, recursively, folders."""
    found = []
    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and "_cloaked" not in f.stem:
                    found.append((f, p))
        else:
            found.append((p, None))  # a missing or odd file still gets its own error status
    return found


def plan_outputs(paths, out_dir=None, fmt: str = "png") -> list[Job]:
    """`<stem>_cloaked.<ext>` next to each input, or in out_dir (mirroring sub-folders of a
    folder input so two `a.jpg` in different folders never collide)."""
    suffix = SUFFIX_OF_FORMAT[fmt]
    jobs, taken = [], set()
    for f, root in expand_inputs(paths):
        folder = f.parent
        if out_dir is not None:
            folder = Path(out_dir) / (f.parent.relative_to(root) if root is not None else "")
        out = folder / f"{f.stem}_cloaked{suffix}"
        if out in taken:  # x.jpg and x.png, or a/x.jpg and b/x.jpg into one folder
            out = folder / f"{f.stem}_{f.suffix.lstrip('.').lower()}_cloaked{suffix}"
        taken.add(out)
        jobs.append(Job(f, out))
    return jobs
