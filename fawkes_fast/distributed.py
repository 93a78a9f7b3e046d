"""Cloak photo archives on a Ray cluster (`fawkes-fast cloak PATH... -o DIR --ray [auto|ADDRESS]`).

    rows = cloak_paths(["archive/"], "cloaked/", actors=4, mode="mid", seed=0)

The driver plans the jobs exactly as a local run does (`jobs.plan_jobs`: same output names, and
outputs already there preset to "exists", which is how an interrupted run resumes). The jobs left
to do flow through a Ray Data pipeline, `from_items -> map_batches(CloakActor)`, into a fixed pool
of actors that each keep one warm Cloaker (one GPU per actor when the cluster has GPUs). An actor
runs `jobs.cloak_jobs` on its batch, the same code as a local run: it reads the files, cloaks
them, writes each output atomically and returns the report rows, which the driver puts back in
input order. Inputs and outputs must therefore sit on storage that every node sees.

Ray is an optional extra (`pip install 'fawkes_fast[ray]'`), imported here only when a run starts.
"""
from __future__ import annotations

import os
import pickle
from contextlib import contextmanager
from pathlib import Path

from .jobs import INTERRUPTED, Interrupted, Job, SaveOptions, cloak_jobs, make_row, persons_target, plan_jobs

RAY_MISSING = "the Ray path needs Ray Data: pip install 'fawkes_fast[ray]' (or pip install 'ray[data]')"


class RayUnavailable(RuntimeError):
    """Ray is not installed, or the cluster asked for cannot be reached."""


def import_ray():
    """The `ray` module with `ray.data` loaded, or RayUnavailable saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - the pipeline needs it
    except ImportError as e:
        raise RayUnavailable(f"{RAY_MISSING} ({e})") from None
    return ray


# ----------------------------------------------------------------------------- the actor

class CloakActor:
    """One warm Cloaker per Ray actor; each call cloaks one batch of jobs with `cloak_jobs`."""

    def __init__(self, cloaker_kwargs: dict, options: SaveOptions, seed, target, batch_size: int, person=None):
        from .cloaker import Cloaker

        self.cloaker = Cloaker(**cloaker_kwargs)
        self.options, self.seed, self.target, self.batch_size = options, seed, target, batch_size
        self.person = person

    def __call__(self, batch: dict) -> dict:
        jobs = [Job(Path(str(s)), Path(str(o))) for s, o in zip(batch["source"], batch["output"])]
        rows = cloak_jobs(self.cloaker, jobs, self.options, seed=self.seed, target=self.target,
                          batch_size=self.batch_size, person=self.person)
        # pickled: the rows keep their exact types (tuples, nested dicts) through Arrow
        return {"index": batch["index"], "row": [pickle.dumps(r) for r in rows]}


# ----------------------------------------------------------------------------- the cluster

@contextmanager
def workers_at_normal_priority():
    """While Ray starts a local cluster here: its workers at nice 0, not Ray's default 15 (a cloak is
    the user's foreground work; at 15, beside two busy processes on 2 cores, an actor got 19 s of CPU
    in 8.5 min). RAY_worker_niceness, if set, wins; a cluster joined keeps its own setting."""
    before = os.environ.get("RAY_worker_niceness")
    os.environ.setdefault("RAY_worker_niceness", "0")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("RAY_worker_niceness", None)


@contextmanager
def ray_session(address=None):
    """Ray for the length of a run. A Ray already initialised in this process is used as is (and
    left running); otherwise `address` goes to `ray.init`: None joins the cluster of RAY_ADDRESS
    or of this machine (`ray start`) and else starts a local one; "auto" needs a running cluster;
    "local" always starts a new local one; "HOST:PORT" or "ray://HOST:PORT" is that cluster."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    try:
        with workers_at_normal_priority():
            ray.init(address=address or None)
    except ConnectionError as e:
        where = f"reach a Ray cluster at {address!r}" if address else "join or start a Ray cluster"
        raise RayUnavailable(f"cannot {where}: {e}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def actor_resources(ray, actors: int | None, cpus_per_actor: float, device) -> tuple[int, dict]:
    """(pool size, per-actor resources): one GPU per actor when the cluster has GPUs and the
    device is not forced to the CPU; by default one actor per GPU, else a single actor."""
    total = ray.cluster_resources()
    gpus = int(total.get("GPU", 0)) if str(device or "auto").split(":")[0] != "cpu" else 0
    actors = actors or max(gpus, 1)
    if actors < 1:
        raise ValueError(f"actors must be at least 1, got {actors}")
    if not gpus and str(device).startswith("cuda"):
        raise ValueError(f"device {device!r} was asked for, but the Ray cluster has no GPU")
    if gpus and actors > gpus:
        raise ValueError(f"{actors} actors need one GPU each, but the cluster has {gpus}")
    if not gpus and actors * cpus_per_actor > total.get("CPU", 0):
        raise ValueError(f"{actors} actors of {cpus_per_actor} CPU need more than the cluster's "
                         f"{total.get('CPU', 0):g} CPUs")
    return actors, {"num_cpus": cpus_per_actor, "num_gpus": 1 if gpus else 0}


@contextmanager
def _quiet_progress(ray):
    """Ray Data's own progress bars off for the run: the caller reports progress (`on_row`)."""
    context = ray.data.DataContext.get_current()
    shown = context.enable_progress_bars
    context.enable_progress_bars = False
    try:
        yield
    finally:
        context.enable_progress_bars = shown


def _pipeline(ray, todo: list[tuple[int, Job]], actor_args: tuple, actors: int, resources: dict, batch_size: int):
    items = [{"index": i, "source": str(j.source), "output": str(j.output)} for i, j in todo]
    ds = ray.data.from_items(items, override_num_blocks=-(-len(items) // batch_size))  # a block per batch
    return ds.map_batches(CloakActor, fn_constructor_args=actor_args, batch_size=batch_size,
                          batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors), **resources)


# ----------------------------------------------------------------------------- runs

def _finish_unreported(jobs: list[Job], rows: list, options: SaveOptions, status: str, reason: str) -> list[dict]:
    """Rows for the jobs whose batch never reported back. Without overwrite, an output now on
    disk was not there at planning: a batch cut short wrote it, and it is reported "exists", as
    a rerun would see it."""
    for i, job in enumerate(jobs):
        if rows[i] is None:
            if not options.overwrite and job.output is not None and job.output.exists():
                rows[i] = make_row(job, "exists", "written by a batch that did not report back")
            else:
                rows[i] = make_row(job, status, reason)
    return rows


def _one_line(error: Exception) -> str:
    """A Ray error as one line, its original exception without Ray's traceback."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException) and cause is not error:
        return f"{type(cause).__name__}: {cause}"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _collect(ds, rows: list, on_row, should_stop) -> bool:
    """Fill `rows` as the actors report, a whole actor batch at a time; False once
    `should_stop()` asked to stop early."""
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for index, data in zip(batch["index"], batch["row"]):
            rows[int(index)] = row = pickle.loads(data)
            if on_row is not None:
                on_row(row)
        if should_stop is not None and should_stop():
            return False
    return True


def cloak_jobs_on_ray(jobs: list[Job], options: SaveOptions, *, cloaker_kwargs: dict | None = None, seed=None,
                      target="max", batch_size: int = 16, address=None, actors: int | None = None,
                      cpus_per_actor: float = 1, on_row=None, should_stop=None, person=None) -> list[dict]:
    """`jobs.cloak_jobs` on a Ray cluster: the same rows, in the same order, and the same files.

    cloaker_kwargs: arguments of each actor's `Cloaker(...)` (mode, extractors, device, options).
    batch_size: photos per actor call, and per `Cloaker.cloak` call inside it.
    Ctrl-C raises `jobs.Interrupted` with a row for every job, as `cloak_jobs` does; once
    `should_stop()` is true the run stops and the unfinished jobs are reported "skipped".
    person: the photos are one person's, as in `cloak_jobs`: one actor cloaks batch after batch until one
    chooses the person's target (eq. 3 over its photos), then every actor takes the rest to that identity,
    so the pixels are those of the local run with the same batch size."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    cloaker_kwargs = dict(cloaker_kwargs or {})
    rows: list = [None] * len(jobs)
    for i, job in enumerate(jobs):  # decided at planning time: no actor needed
        if job.status is not None:
            rows[i] = make_row(job, job.status, job.reason)
            if on_row is not None:
                on_row(rows[i])
    todo = [(i, j) for i, j in enumerate(jobs) if j.status is None]
    import_ray()  # a clear error up front, even when there is nothing left to cloak
    if not todo:
        return rows
    with ray_session(address) as ray:
        actors, resources = actor_resources(ray, actors, cpus_per_actor, cloaker_kwargs.get("device"))
        def run(part, target, n_actors) -> bool:
            ds = _pipeline(ray, part, (cloaker_kwargs, options, seed, target, batch_size, person), n_actors,
                           resources, batch_size)
            return _collect(ds, rows, on_row, should_stop)

        try:
            with _quiet_progress(ray):
                going = True
                while going and todo and person is not None and target in ("max", "average"):
                    first, todo = todo[:batch_size], todo[batch_size:]
                    going = run(first, target, 1)
                    target = persons_target(rows[i] for i, _ in first) or target
                if going and todo:
                    run(todo, target, actors)
        except KeyboardInterrupt:
            raise Interrupted(_finish_unreported(jobs, rows, options, "skipped", INTERRUPTED)) from None
        except ray.exceptions.RayError as e:  # a lost node or actor: the unreported photos failed
            return _finish_unreported(jobs, rows, options, "error", f"the Ray run failed: {_one_line(e)}")
    return _finish_unreported(jobs, rows, options, "skipped", INTERRUPTED)


def cloak_paths(paths, output_dir=None, *, address=None, actors: int | None = None, mode: str = "mid",
                format: str = "png", quality: int = 95, seed=None, extractors=None, target="max",
                device=None, overwrite: bool = False, keep_metadata: bool = False, batch_size: int = 16,
                cpus_per_actor: float = 1, on_row=None, person=None, **cloaker_options) -> list[dict]:
    """Cloak files and folders on a Ray cluster, as `fawkes-fast cloak PATH... -o DIR` does
    locally: one report row per input found (see `fawkes_fast.jobs`). `cloaker_options` go to
    each actor's `Cloaker` (e.g. steps=, rho=, diversity=, flip=). Outputs already there are left
    alone ("exists") unless overwrite, so rerunning an interrupted run finishes it."""
    jobs = plan_jobs(paths, output_dir, format, overwrite)
    cloaker_kwargs = {"mode": mode, "extractors": None if extractors is None else tuple(extractors), "device": device,
                      "batch_size": batch_size, **cloaker_options}
    return cloak_jobs_on_ray(jobs, SaveOptions(format, quality, keep_metadata, overwrite),
                             cloaker_kwargs=cloaker_kwargs, seed=seed, target=target, batch_size=batch_size,
                             address=address, actors=actors, cpus_per_actor=cpus_per_actor, on_row=on_row,
                             person=person)
