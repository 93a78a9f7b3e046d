"""Cloak files on disk: plan the outputs, cloak in batches, write each photo when done, report.

The layer between the Cloaker and its front ends (the CLI, the server, the Ray path):

    jobs = plan_jobs(["photos/"], output_dir="out", fmt="png")
    rows = cloak_jobs(cloaker, jobs, SaveOptions(), seed=0, target="max", batch_size=16)
    write_report("report.json", rows)

Every input found gets one row (a dict: source, output, status, reason, error, seconds, faces).
Its `status` is one of:

* ``cloaked``: the output was written (`output`).
* ``no_face``: no face found; nothing written. Not a failure.
* ``over_budget``: a face's cloak could not meet the DSSIM budget; nothing written. A failure.
* ``error``: the photo could not be read, cloaked or written (`error` says why). A failure.
* ``skipped``: not attempted (`reason`: a symlinked folder, a symlink in a folder that loops or
  leads nowhere, a file named like an output, a duplicate input, a run interrupted before it).
  Not a failure.
* ``exists``: the output is already there (a rerun); left alone unless overwrite. Not a failure.

`reason` says why a row is not ``cloaked``; `error` repeats it for the two failures. `seconds` is
the cloak time of the photo's batch shared among the batch's cloaked photos (None otherwise).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .io.files import write_atomic
from .io.images import IMAGE_SUFFIXES, encode_image
from .io.inputs import Found, find_inputs
from .io.save import (OUTPUT_SUFFIXES, check_not_protected, folder_write_problem, resolved_path, same_file,
                      write_bytes_atomic)

STATUSES = ("cloaked", "no_face", "over_budget", "error", "skipped", "exists")
FAILED = frozenset({"over_budget", "error"})
INTERRUPTED = "interrupted before it was cloaked"
_MAGIC = {"png": (b"\x89PNG",), "jpeg": (b"\xff\xd8",), "webp": (b"RIFF",)}


@dataclass
class Job:
    source: Path
    output: Path | None  # None when the job is skipped before an output is planned
    status: str | None = None  # preset for rows decided before cloaking (skipped, exists, error)
    reason: str | None = None


@dataclass(frozen=True)
class SaveOptions:
    format: str = "png"  # png, jpeg or webp
    quality: int = 95  # JPEG/WebP quality
    keep_metadata: bool = False  # keep EXIF (incl. GPS, never the thumbnail) and the ICC profile
    overwrite: bool = False  # replace existing outputs (never an input, never a file this run wrote)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during `cloak_jobs`; `rows` holds a row for every job (unfinished ones skipped)."""

    def __init__(self, rows: list[dict]):
        super().__init__("interrupted")
        self.rows = rows


# ----------------------------------------------------------------------------- planning

def _output_folder(found: Found, output_dir) -> Path:
    if output_dir is None:
        return found.path.parent
    return Path(output_dir) / (found.path.parent.relative_to(found.root) if found.root is not None else "")


def _plain_output(found: Found, output_dir, suffix: str) -> Path:
    return _output_folder(found, output_dir) / f"{found.path.stem}_cloaked{suffix}"


def _own_output(plain: Path, source: Path, taken: set) -> Path:
    """For an input whose plain name is shared or is an input: a name derived from its own
    resolved path, so that it stays the same on a rerun whatever else is given."""
    digest = hashlib.sha1(str(resolved_path(source)).encode()).hexdigest()
    for n in range(8, len(digest) + 1):
        out = plain.with_name(f"{plain.stem}_{digest[:n]}{plain.suffix}")
        if resolved_path(out) not in taken:
            return out
    raise ValueError(f"cannot find a free output name for {source}")


def _preset(job: Job, overwrite: bool, problems: dict) -> None:
    """Decide up front what need not or cannot be cloaked: unwritable folders, existing outputs."""
    folder = job.output.parent
    if folder not in problems:
        problems[folder] = folder_write_problem(folder)
    if problems[folder]:
        job.status, job.reason = "error", problems[folder]
    elif job.output.is_dir():
        job.status, job.reason = "error", f"cannot write {job.output}: it is a folder"
    elif job.output.exists() and not overwrite:
        job.status, job.reason = "exists", "output already exists"


def plan_jobs(paths, output_dir=None, fmt: str = "png", overwrite: bool = False) -> list[Job]:
    """One Job per file found under `paths` (see the module docstring for the preset statuses).

    Outputs are `<stem>_cloaked.<ext>` beside each input, or in `output_dir` mirroring the
    folders below a folder input. Inputs whose name would be shared (a/x.jpg and b/x.jpg into one
    folder), or would be an input, get `<stem>_cloaked_<8 hex of the input's path>.<ext>`: unique,
    and the same on every rerun. Folder writability is checked here, before any work."""
    if fmt not in OUTPUT_SUFFIXES:
        raise ValueError(f"unsupported output format {fmt!r}; use {', '.join(OUTPUT_SUFFIXES)}")
    found = find_inputs(paths)
    jobs, first = [], {}
    for f in found:
        key = resolved_path(f.path)
        if f.skip or f.error:
            jobs.append(Job(f.path, None, "skipped" if f.skip else "error", f.skip or f.error))
        elif key in first:
            jobs.append(Job(f.path, None, "skipped", f"same file as an earlier input ({first[key]})"))
        else:
            first[key] = f.path
            jobs.append(Job(f.path, None))
    plain = {i: _plain_output(f, output_dir, OUTPUT_SUFFIXES[fmt]) for i, f in enumerate(found)
             if jobs[i].status is None}
    claims = Counter(resolved_path(out) for out in plain.values())
    taken, problems = set(first) | set(claims), {}
    for i, out in plain.items():
        shared = claims[resolved_path(out)] > 1 or resolved_path(out) in first
        jobs[i].output = _own_output(out, jobs[i].source, taken) if shared else out
        taken.add(resolved_path(jobs[i].output))
        _preset(jobs[i], overwrite, problems)
    return jobs


# ----------------------------------------------------------------------------- rows

def _jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _face_row(face) -> dict:
    return dataclasses.asdict(face) if dataclasses.is_dataclass(face) else dict(face)


def make_row(job: Job, status: str, reason: str | None = None, faces=(), seconds: float | None = None) -> dict:
    shown = job.output if status in ("cloaked", "exists") else None
    return {"source": str(job.source), "output": str(shown) if shown else None, "status": status,
            "reason": reason, "error": reason if status in FAILED else None,
            "seconds": None if seconds is None else round(seconds, 3),
            "faces": [_face_row(f) for f in faces]}


def _encoded(result, options: SaveOptions) -> bytes:
    """The bytes to write: the ones whose budget the cloaker checked when they are in the asked
    format and no metadata is added; otherwise the same pixels encoded with the metadata."""
    encoded = getattr(result, "encoded", None)
    if encoded and not options.keep_metadata and encoded.startswith(_MAGIC[options.format]):
        return encoded
    info = result.info if options.keep_metadata else None
    return encode_image(result.image, options.format, options.quality,
                        exif=getattr(info, "exif", None), icc_profile=getattr(info, "icc_profile", None))


def save_result(job: Job, result, options: SaveOptions, protect: set, seconds: float | None = None) -> dict:
    """Write a cloaked result to `job.output` atomically and return its report row; any other
    result just becomes its row. Never writes over a path in `protect` (inputs and the files this
    run wrote); the written path is added to `protect`."""
    if result.status != "cloaked":
        return make_row(job, result.status, result.error or result.status, result.faces)
    try:
        check_not_protected(job.output, protect)
        job.output.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(job.output, _encoded(result, options), overwrite=options.overwrite)
    except FileExistsError:
        return make_row(job, "exists", "output already exists", result.faces)
    except (OSError, ValueError) as e:
        return make_row(job, "error", f"cannot write {job.output}: {e}", result.faces)
    protect.add(resolved_path(job.output))
    return make_row(job, "cloaked", None, result.faces, seconds)


# ----------------------------------------------------------------------------- running

def _cloak_batch(cloaker, jobs, batch, options, protect, seed, target, on_row, rows, person=None) -> None:
    t0 = time.perf_counter()
    results = cloaker.cloak([jobs[i].source for i in batch], seed=seed, target=target,
                            format=options.format, quality=options.quality, person=person)
    cloaked = sum(r.status == "cloaked" for r in results)
    share = (time.perf_counter() - t0) / cloaked if cloaked else None
    for i, result in zip(batch, results):  # each photo is on disk before the next batch starts
        rows[i] = save_result(jobs[i], result, options, protect, share)
        if on_row is not None:
            on_row(rows[i])


def persons_target(rows) -> str | None:
    """The identity a person's photos chose together (the first cloaked photo's largest face), if any."""
    for r in rows:
        if r["status"] == "cloaked" and r["faces"] and r["faces"][0]["target"]:
            return r["faces"][0]["target"]
    return None


def cloak_jobs(cloaker, jobs: list[Job], options: SaveOptions, seed=None, target="max", batch_size: int = 16,
               on_row=None, should_stop=None, person: str | None = None) -> list[dict]:
    """Cloak the jobs without a preset status, `batch_size` photos per `cloaker.cloak` call, and
    write each photo as soon as its batch is done. Returns one row per job, in order; `on_row`
    sees each row when it is final. `should_stop()` is asked between batches; once it is true
    (or on Ctrl-C, which raises `Interrupted` with the rows) the rest are skipped.

    person: the photos are one person's. The first batch with a cloaked photo chooses the target
    together (eq. 3 over its photos' largest faces, `person=`); later batches are pushed to that
    identity, so every photo shares it (one target per person protected 97% against native dlib where
    one per photo gave 78%: README "Modes")."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    rows: list = [None] * len(jobs)
    for i, job in enumerate(jobs):
        if job.status is not None:
            rows[i] = make_row(job, job.status, job.reason)
            if on_row is not None:
                on_row(rows[i])
    protect = {resolved_path(j.source) for j in jobs if j.status != "skipped"}
    todo = [i for i, j in enumerate(jobs) if j.status is None]
    try:
        for start in range(0, len(todo), batch_size):
            if should_stop is not None and should_stop():
                break
            batch = todo[start:start + batch_size]
            _cloak_batch(cloaker, jobs, batch, options, protect, seed, target, on_row, rows, person)
            if person is not None and target in ("max", "average"):
                target = persons_target(rows[i] for i in batch) or target
    except KeyboardInterrupt:
        raise Interrupted(_fill_interrupted(jobs, rows)) from None
    return _fill_interrupted(jobs, rows)


def _fill_interrupted(jobs, rows) -> list[dict]:
    return [row if row is not None else make_row(job, "skipped", INTERRUPTED) for job, row in zip(jobs, rows)]


def judge_rows(rows: list[dict]) -> None:
    """Add to each face of each cloaked row how visible its cloak is (`visibility`: butteraugli and
    SSIMULACRA2 over the face next to the photo's JPEG re-saves, evaluate.judges), measured on the
    written file against its source as loaded (EXIF orientation applied). Needs the judges."""
    from .evaluate.judges import judge_face
    from .io.images import load_image

    for row in rows:
        if row["status"] != "cloaked" or not row["faces"]:
            continue
        original, output = load_image(row["source"]), load_image(row["output"])
        for face in row["faces"]:
            face["visibility"] = judge_face(original, output, face["box"]).as_dict()


# ----------------------------------------------------------------------------- report

def check_report_path(path, inputs=()) -> None:
    """Raise ValueError unless a JSON report can be written at `path` without harm: not an input
    (nor a file named like an image), not a folder, in a folder that exists and is writable."""
    path = Path(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise ValueError(f"report {path}: named like an image; give it a .json name")
    if path.is_dir():
        raise ValueError(f"report {path}: is a folder")
    if not path.parent.is_dir():
        raise ValueError(f"report {path}: folder {path.parent} does not exist")
    problem = folder_write_problem(path.parent)
    if problem:
        raise ValueError(f"report {path}: {problem}")
    for p in inputs:
        if same_file(path, Path(p)):
            raise ValueError(f"report {path}: it is an input or an output of this run ({p})")


def write_report(path, rows: list[dict], protect=()) -> Path:
    """Write the rows as JSON, atomically; never over a path in `protect`."""
    path = Path(path)
    check_not_protected(path, protect)
    text = json.dumps(rows, indent=1, default=_jsonable)
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text))
