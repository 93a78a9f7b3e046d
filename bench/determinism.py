"""Which stages of the CPU cloak give other bits on a busy machine, or with another thread count (issue #23).

    python bench/determinism.py                        # every stage: 3 runs under load, and 1 thread vs 2
    python bench/determinism.py --stages extractor_backward colour --repeats 10 --nice 0
    python bench/determinism.py --ops --stages cloak         # which torch ops: every op run twice
    python bench/determinism.py --ops --load --stages engine # ... the second time under load, same threads
    python bench/determinism.py --ab --rounds 5             # what the fixes cost a `mid` photo

Each stage of one real cloak (an LFW photo's batch) runs once on a quiet machine with 2 torch threads
(the reference), then `--repeats` times while a CPU burner keeps both cores busy, then once with 1
thread. A stage's outputs (tensors, arrays, bytes) are compared bit for bit; a row says how many runs
under load matched and, where one did not, by how much it differed.

`--ops` goes down to the torch ops: while the stages run, every op is run a second time on copies of
its inputs (with 1 thread, or with `--load` with the same threads under the burner) and each op whose
outputs differ is listed with its input shapes. Tooling, not runtime: the burner is also the tests'
`cpu_burner` fixture (tests/conftest.py).

`--ab` measures what the fixes cost: seconds of a `mid` photo (load to PNG bytes, 2 threads) with the
dlib extractor as it was before issue #23 and as it is, the two alternating call by call so that the
load of other jobs falls on both alike. (The other fixes, the SSIM kernel's fixed row blocks and
the colour term's row sums, change no amount of work.)
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

LFW = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw"
PHOTO = LFW / "Aaron_Sorkin" / "Aaron_Sorkin_0001.jpg"
_SPIN = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"
TIMED = [LFW / n / f"{n}_{i:04d}.jpg" for n, i in
         (("Aaron_Sorkin", 1), ("Abdullah_Gul", 2), ("Adam_Sandler", 1), ("George_W_Bush", 1))]  # one face each


@contextmanager
def burning_cpus(processes: int = 2, seconds: float = 600, nice: int = 0):
    """`processes` busy Python processes for the length of the block (at most `seconds`: each stops
    by itself then, so a crashed caller leaves nothing spinning); `nice` lowers their priority."""
    start = (lambda: os.nice(nice)) if nice else None
    procs = [subprocess.Popen([sys.executable, "-c", _SPIN.format(seconds=float(seconds))], preexec_fn=start)
             for _ in range(processes)]
    try:
        time.sleep(0.2)  # let them reach their loops
        yield procs
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


# ----------------------------------------------------------------------------- the stages

class Case:
    """One real photo's batch, and a mid-descent iterate of it, as the engine sees them."""

    def __init__(self, photo: Path, mode: str):
        import numpy as np
        import torch

        from fawkes_fast import Cloaker
        from fawkes_fast.batch import Photo
        from fawkes_fast.io.images import load_image
        from fawkes_fast.optimize.modes import settings_for
        from fawkes_fast.targets.assign import assign_targets

        self.cloaker = Cloaker(mode=mode, device="cpu")
        self.settings = settings_for(mode)
        self.rgb = load_image(photo)
        self.faces = self.cloaker.pipeline.detect(self.rgb)
        batch = self.cloaker.pipeline.build_batch([Photo(0, self.rgb, None, self.faces, seed=9)])
        assign_targets(batch, "max", 32, ["dlib"])
        self.batch = batch
        self.x0, self.mats, self.targets, _, _ = batch.select([0])
        g = torch.Generator().manual_seed(0)
        # an iterate a few steps in: the budget and colour terms are not at their zero
        self.x = (self.x0 + (torch.rand(self.x0.shape, generator=g) * 2 - 1) * 3).clamp(0, 255)
        self.boxes = torch.as_tensor(np.stack([batch.boxes[0]]), dtype=torch.long)
        self.ext = self.cloaker.pipeline.extractors[0]


def _grad(loss_of, x):
    import torch

    xa = x.detach().clone().requires_grad_(True)
    loss = loss_of(xa)
    (g,) = torch.autograd.grad(loss.sum(), xa)
    return loss.detach(), g


def stage_detection(c: Case) -> dict:
    faces = c.cloaker.pipeline.detect(c.rgb)
    return {"boxes": [f.box for f in faces], "landmarks": [f.landmarks for f in faces]}


def stage_batch(c: Case) -> dict:
    """Crops, warp matrices and clean features (warps and the extractor's forward, no gradient)."""
    from fawkes_fast.batch import Photo

    b = c.cloaker.pipeline.build_batch([Photo(0, c.rgb, None, c.faces, seed=9)])
    return {"crops": b.crops, "mats": b.mats, "clean": b.clean}


def stage_warp(c: Case) -> dict:
    """The chip warp (affine_grid + grid_sample), forward and backward."""
    import torch

    from fawkes_fast.faces.warp import warp_batch

    weights = torch.linspace(-1, 1, 3 * c.ext.chip_size ** 2).view(1, 3, c.ext.chip_size, c.ext.chip_size)
    xa = c.x.detach().clone().requires_grad_(True)
    chips = warp_batch(xa, c.mats[0], c.ext.chip_size)
    (g,) = torch.autograd.grad(chips, xa, weights)
    return {"chips": chips.detach(), "grad": g}


def stage_extractor_forward(c: Case) -> dict:
    from fawkes_fast.faces.warp import warp_batch

    chips = warp_batch(c.x, c.mats[0], c.ext.chip_size)
    return {"raw": c.ext.module(chips), "features": c.ext.features(chips)}


def stage_extractor_backward(c: Case) -> dict:
    """The feature loss's gradient through the extractor and the warp (the engine's heaviest part)."""
    from fawkes_fast.faces.warp import warp_batch

    def loss(xa):
        return (c.ext.features(warp_batch(xa, c.mats[0], c.ext.chip_size)) - c.targets[0]).pow(2).sum(1)

    value, g = _grad(loss, c.x)
    return {"loss": value, "grad": g}


def stage_ssim(c: Case) -> dict:
    """The fused DSSIM over the whole crop (the extension's kernels), forward and backward."""
    from fawkes_fast import ops

    value, g = _grad(lambda xa: ops.dssim(xa, c.x0), c.x)
    return {"dssim": value, "grad": g}


def stage_budget(c: Case) -> dict:
    """DSSIM over the budget boxes (an SSIM map, integral images), forward and backward."""
    from fawkes_fast.faces.budget import boxes_dssim

    value, g = _grad(lambda xa: boxes_dssim(xa, c.x0, c.boxes).amax(1), c.x)
    return {"dssim": value, "grad": g}


def stage_colour(c: Case) -> dict:
    """The colour hinge: CIELAB, ΔE76, its box means and peaks, forward and backward."""
    from fawkes_fast.optimize.colour import colour_excess, delta_e76, rgb_to_lab

    lab0 = rgb_to_lab(c.x0)
    s = c.settings

    def loss(xa):
        return colour_excess(delta_e76(rgb_to_lab(xa), lab0), c.boxes, s.colour_mean, s.colour_peak)

    value, g = _grad(loss, c.x)
    return {"lab": rgb_to_lab(c.x), "excess": value, "grad": g}


def stage_adam(c: Case) -> dict:
    import torch

    from fawkes_fast import ops

    w = ops.image_to_tanh(c.x)
    m, v, x = torch.zeros_like(w), torch.zeros_like(w), c.x.clone()
    g = torch.linspace(-1, 1, w.numel()).view_as(w)
    for step in range(1, 4):
        ops.tanh_adam_step(w, m, v, x, g, torch.full((1,), float(step)), torch.full((1,), 0.03))
    return {"w": w, "m": m, "v": v, "x": x}


def stage_engine(c: Case) -> dict:
    """A few whole optimiser steps (all of the above together)."""
    from fawkes_fast.optimize.engine import optimise

    out = optimise([c.ext], c.x0, c.mats, c.targets, c.settings.with_options(steps=6), seeds=[1],
                   boxes=[c.batch.boxes[0]])
    return {"best": out.best, "dssim": out.dssim}


def stage_finalize(c: Case) -> dict:
    """Paste (bicubic upsampling), the budget on the 8-bit output, the colour measures, PNG bytes."""
    import numpy as np

    from fawkes_fast.finalize import FaceCloak, finalize_photo

    cloak = FaceCloak(region=c.batch.regions[0], box=np.asarray(c.faces[0].box), delta=(c.x - c.x0)[0] * 0.5)
    done = finalize_photo(c.rgb, [cloak], c.settings.rho, "png")
    return {"image": done.image, "png": done.encoded, "measures": [sorted(m.items()) for m in done.measures]}


def stage_encoding(c: Case) -> dict:
    from fawkes_fast.io.images import encode_image

    return {fmt: encode_image(c.rgb, fmt, 90) for fmt in ("png", "jpeg", "webp")}


def stage_cloak(c: Case) -> dict:
    """The whole public call, as the issue ran it."""
    r = c.cloaker.cloak([c.rgb], seed=9, format="png")[0]
    return {"png": r.encoded}


STAGES = {name[len("stage_"):]: fn for name, fn in globals().items() if name.startswith("stage_")}


# ----------------------------------------------------------------------------- comparing

def _leaves(value, name=""):
    """(name, leaf) pairs of nested dicts / lists."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, f"{name}.{k}" if name else str(k))
    elif isinstance(value, (list, tuple)) and not all(isinstance(v, (int, float, str)) for v in value):
        for i, v in enumerate(value):
            yield from _leaves(v, f"{name}[{i}]")
    else:
        yield name, value


def difference(a, b) -> float:
    """0.0 where `a` and `b` are the same bits; else the largest absolute difference (inf where they
    cannot be compared as numbers)."""
    import numpy as np
    import torch

    worst = 0.0
    for (_, x), (_, y) in zip(_leaves(a), _leaves(b), strict=True):
        if isinstance(x, torch.Tensor):
            x, y = (t.detach().float().numpy() if t.dtype == torch.bfloat16 else t.detach().numpy() for t in (x, y))
        if isinstance(x, np.ndarray):
            if x.shape != y.shape:
                return float("inf")
            if x.tobytes() != y.tobytes():
                worst = max(worst, float(np.abs(x.astype(np.float64) - y.astype(np.float64)).max()) or 1e-300)
        elif x != y:
            worst = float("inf")
    return worst


class OpAudit:
    """Runs every torch op a second time on copies of its inputs (with `threads` torch threads) and
    counts, per op, the calls whose floating-point outputs (or mutated inputs) differ in any bit."""

    def __init__(self, threads: int):
        self.threads, self.calls, self.differ = threads, {}, {}

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        audit = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                return audit._run(func, args, kwargs or {})

        self._mode = Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)

    def _run(self, func, args, kwargs):
        import torch
        from torch.utils._pytree import tree_flatten, tree_map

        clones = {}  # one copy per tensor, so that `out=` aliasing an input still aliases it

        def copy(t):
            if isinstance(t, torch.Tensor) and id(t) not in clones:
                clones[id(t)] = t.clone()
            return clones.get(id(t), t)

        copies = tree_map(copy, (args, kwargs))
        out = func(*args, **kwargs)
        name = str(func)
        if "empty" in name:  # uninitialised memory: nothing to compare
            return out
        threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            again = func(*copies[0], **copies[1])
        finally:
            torch.set_num_threads(threads)
        first = [t for t in tree_flatten((out, args, kwargs))[0] if isinstance(t, torch.Tensor)]
        second = [t for t in tree_flatten((again, *copies))[0] if isinstance(t, torch.Tensor)]
        self.calls[name] = self.calls.get(name, 0) + 1
        worst = max((difference(a, b) for a, b in zip(first, second) if a.dtype.is_floating_point), default=0.0)
        if worst:
            shapes = tuple(tuple(t.shape) for t in tree_flatten(args)[0] if isinstance(t, torch.Tensor))
            self.differ.setdefault(name, {})
            self.differ[name][shapes] = max(self.differ[name].get(shapes, 0.0), worst)
        return out

    def report(self) -> list[str]:
        lines = []
        for name, by_shape in sorted(self.differ.items()):
            lines.append(f"{name}: {len(by_shape)} input shape(s) differ, of {self.calls[name]} calls")
            lines += [f"    {shapes}: up to {worst:.3g}" for shapes, worst in sorted(by_shape.items())]
        return lines or ["no op differs"]


def audit_ops(case: Case, stages, threads: int, load: bool, nice: int) -> list[str]:
    """OpAudit over the stages: each op again with 1 thread, or (`load`) with `threads` under the burner."""
    import contextlib

    import torch

    torch.set_num_threads(threads)
    with burning_cpus(nice=nice) if load else contextlib.nullcontext(), OpAudit(threads if load else 1) as audit:
        for name in stages:
            STAGES[name](case)
    return audit.report()


def check(case: Case, stages, repeats: int, nice: int, threads: int) -> list[tuple]:
    """Per stage: (name, runs under load identical to the quiet reference, out of `repeats`, largest
    difference under load, difference with 1 thread)."""
    import torch

    rows = []
    for name in stages:
        fn = STAGES[name]
        torch.set_num_threads(threads)
        reference = fn(case)
        loaded = []
        if repeats:
            with burning_cpus(nice=nice):
                loaded = [difference(reference, fn(case)) for _ in range(repeats)]
        torch.set_num_threads(1)
        single = difference(reference, fn(case))
        torch.set_num_threads(threads)
        rows.append((name, sum(d == 0 for d in loaded), max(loaded, default=0.0), single))
    return rows


def before_dlib():
    """dlib's module as it was before issue #23 (the stem a strided conv, every block channels-last,
    the last layer a matrix product), traced."""
    import torch
    import torch.nn.functional as F

    from fawkes_fast.extractors.dlib_resnet import read_dlib_resnet

    class Before(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, chips):
            net = self.net
            x = F.max_pool2d(F.relu(net.stem((chips - net.mean) * (1.0 / 256.0))), 3, 2)
            for block in net.blocks:
                x = block(x)
            return net.fc(x.mean(dim=(2, 3)))

    net = read_dlib_resnet()
    stem = torch.nn.Conv2d(3, 32, 7, stride=2)
    stem.load_state_dict(net.stem.state_dict())
    net.stem = stem
    for block in net.blocks:
        block.plain_layout = False
    module = Before(net.to(memory_format=torch.channels_last)).requires_grad_(False)
    with torch.no_grad():
        return torch.jit.trace(module, torch.rand(2, 3, 150, 150) * 255, check_trace=False)


def ab(photos: list[Path], mode: str, rounds: int) -> list[tuple[float, float, int, int]]:
    """Per photo and round: (seconds before, seconds now, Adam steps before, steps now), the two
    Cloakers alternating call by call (which goes first alternates too)."""
    import dataclasses

    from fawkes_fast import Cloaker

    now, before = Cloaker(mode=mode, device="cpu"), Cloaker(mode=mode, device="cpu")
    before.pipeline._extractors = [dataclasses.replace(now.pipeline.extractors[0], module=before_dlib())]

    def timed(cloaker, seed, photo):
        start = time.perf_counter()
        r = cloaker.cloak([str(photo)], seed=seed, format="png")[0]
        return time.perf_counter() - start, sum(f.steps for f in r.faces)

    for c in (before, now):  # warm-up
        timed(c, 0, photos[0])
    rows = []
    for r in range(rounds):
        for i, p in enumerate(photos):
            order = (before, now) if (r + i) % 2 == 0 else (now, before)
            got = {id(c): timed(c, i, p) for c in order}
            (tb, sb), (tn, sn) = got[id(before)], got[id(now)]
            rows.append((tb, tn, sb, sn))
        print(f"round {r + 1}: before {sum(x[0] for x in rows[-len(photos):]):.2f} s, "
              f"now {sum(x[1] for x in rows[-len(photos):]):.2f} s", flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", nargs="+", choices=sorted(STAGES), default=list(STAGES))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--nice", type=int, default=0, help="niceness of the burner processes")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the reference and the loaded runs")
    ap.add_argument("--mode", help="the stages' mode (default low) or --ab's (default mid)")
    ap.add_argument("--photo", type=Path, default=PHOTO)
    ap.add_argument("--ab", action="store_true", help="time `mid` photos before and after the fixes (see above)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--photos", type=Path, nargs="+", default=TIMED)
    ap.add_argument("--ops", action="store_true", help="audit every torch op of the stages (see above)")
    ap.add_argument("--load", action="store_true", help="with --ops: rerun each op under load, not with 1 thread")
    a = ap.parse_args()
    if a.ab:
        import statistics

        rows = ab(a.photos, a.mode or "mid", a.rounds)
        ratio = statistics.median(tn / tb for tb, tn, _, _ in rows)
        per_step = statistics.median((tn / sn) / (tb / sb) for tb, tn, sb, sn in rows)
        print(f"now/before, median of {len(rows)} pairs: {ratio:.3f} per photo, {per_step:.3f} per Adam step; "
              f"seconds per photo {statistics.median(r[0] for r in rows):.3f} before, "
              f"{statistics.median(r[1] for r in rows):.3f} now (medians); steps {sum(r[2] for r in rows)} before, "
              f"{sum(r[3] for r in rows)} now")
        return 0
    case = Case(a.photo, a.mode or "low")
    if a.ops:
        lines = audit_ops(case, a.stages, a.threads, a.load, a.nice)
        print("\n".join(lines))
        return 0 if lines == ["no op differs"] else 1
    rows = check(case, a.stages, a.repeats, a.nice, a.threads)
    print(f"| stage | identical under load (of {a.repeats}) | largest difference under load | 1 thread vs {a.threads} |")
    print("|---|---|---|---|")
    for name, same, worst, single in rows:
        print(f"| {name} | {same} | {worst:.3g} | {single:.3g} |")
    return 0 if all(same == a.repeats for _, same, _, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
