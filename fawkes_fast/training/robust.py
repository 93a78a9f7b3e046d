"""Adversarially robust fine-tuning of a built-in extractor (paper §5.3): `models train-robust`.

The student starts as the extractor itself; a frozen copy is the teacher. Per batch of chips x:

    x_adv = PGD on the student: L-inf ball of `eps` grey levels, random start, `pgd_steps`
            signed steps of `pgd_step`, maximising ||s(x_adv) - s(x)||^2
    loss  = ||s(x) - t(x)||^2 + beta * ||s(x_adv) - s(x)||^2       (L2-normalised features)

The first term keeps it the same face recognizer; the second makes features stable in a
neighbourhood of each face, which is what lets cloaks made on it transfer (paper Table 3).
"""
from __future__ import annotations

import copy
import json
import math
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..extractors.loading import _quiet_jit
from ..extractors.registry import builtin
from ..io.files import write_atomic
from .recipe import Recipe


def _features(model, x):
    return F.normalize(model(x).float(), dim=1)


def pgd(model, x: torch.Tensor, eps: float, step: float, steps: int, gen: torch.Generator | None = None):
    """Chips within `eps` (L-inf, grey levels) of x whose features move furthest from x's."""
    with torch.no_grad():
        ref = _features(model, x)
    d = (torch.rand(x.shape, generator=gen, device="cpu").to(x.device) * 2 - 1) * eps
    for _ in range(steps):
        d.requires_grad_(True)
        shift = (_features(model, (x + d).clamp(0, 255)) - ref).pow(2).sum()
        (g,) = torch.autograd.grad(shift, d)
        d = (d.detach() + step * g.sign()).clamp(-eps, eps)
    return (x + d).clamp(0, 255).detach()


def feature_shift(model, x, eps, step, steps, batch=64, seed=0) -> float:
    """Mean ||f(x_adv) - f(x)|| (normalised features) under PGD: lower is more robust."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, len(x), batch):
        xb = x[i:i + batch]
        xa = pgd(model, xb, eps, step, steps, gen)
        with torch.no_grad():
            out.append((_features(model, xa) - _features(model, xb)).norm(dim=1))
    return float(torch.cat(out).mean())


def fidelity(student, teacher, x, batch=128) -> float:
    """Mean cosine similarity of student and teacher features on the same chips."""
    sims = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            sims.append((_features(student, x[i:i + batch]) * _features(teacher, x[i:i + batch])).sum(1))
    return float(torch.cat(sims).mean())


def trainable(module: nn.Module) -> nn.Module:
    """Float weight buffers (2-D and up) become parameters: ONNX imports keep weights as buffers;
    1-D ones (biases, batch-norm statistics) and the input normalisation stay fixed."""
    for m in module.modules():
        for name, b in list(m._buffers.items()):
            if b is not None and b.is_floating_point() and b.ndim >= 2 and name not in ("mean", "inv_std"):
                del m._buffers[name]
                m.register_parameter(name, nn.Parameter(b.detach().clone()))
    for p in module.parameters():
        p.requires_grad_(True)
    return module


def spread(model, x, batch=128) -> float:
    """Median feature distance between different chips: the scale a shift should be read against
    (robust training can contract the whole space, which shrinks every shift with it)."""
    with torch.no_grad():
        f = torch.cat([_features(model, x[i:i + batch]) for i in range(0, len(x), batch)])
    d = torch.cdist(f, f)
    return float(d[torch.triu(torch.ones_like(d, dtype=torch.bool), 1)].median())


def _metrics(student, teacher, x, r: Recipe) -> dict:
    kw = dict(eps=r.eps, step=r.eps / 8, steps=r.eval_steps, seed=r.seed)
    out = {"eval_chips": len(x), "pgd_eval": {"eps": r.eps, "step": r.eps / 8, "steps": r.eval_steps},
           "cosine_to_original": fidelity(student, teacher, x)}
    for name, model in (("original", teacher), ("robust", student)):
        out[f"pgd_feature_shift_{name}"] = feature_shift(model, x, **kw)
        out[f"feature_spread_{name}"] = spread(model, x)
        out[f"relative_shift_{name}"] = out[f"pgd_feature_shift_{name}"] / out[f"feature_spread_{name}"]
    return out


def train(base: str, chips: torch.Tensor, recipe: Recipe, device, log=print):
    """(student module in eval mode on CPU, record dict). chips: (N, 3, S, S) uint8."""
    loader = builtin(base)
    template, size, dim = loader.template, loader.chip_size, loader.dim
    teacher = loader.build(loader.source()).eval().to(device)
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = trainable(copy.deepcopy(teacher))
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    order = torch.randperm(len(chips), generator=gen)
    hold, pool = order[:recipe.holdout], order[recipe.holdout:]
    if recipe.limit:
        pool = pool[:recipe.limit]
    x_hold = chips[hold].float().to(device)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=recipe.lr)
    per_epoch = math.ceil(len(pool) / recipe.batch)
    total = max(per_epoch * recipe.epochs, 1)  # epochs 0: metrics of the untouched model only
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, total) / total)))
    history, t_start = [], time.perf_counter()
    for epoch in range(recipe.epochs):
        t0, perm = time.perf_counter(), pool[torch.randperm(len(pool), generator=gen)]
        sums = torch.zeros(2, device=device)  # summed on the device: no host sync per batch
        for b in range(per_epoch):
            x = chips[perm[b * recipe.batch:(b + 1) * recipe.batch]].float().to(device)
            flip = (torch.rand(len(x), generator=gen) < 0.5).to(device)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            with torch.no_grad():
                t = _features(teacher, x)
            xa = pgd(student, x, recipe.eps, recipe.pgd_step, recipe.pgd_steps, gen)
            f = _features(student, torch.cat([x, xa]))
            fc, fa = f[:len(x)], f[len(x):]
            keep, robust = (fc - t).pow(2).sum(1).mean(), (fa - fc).pow(2).sum(1).mean()
            if recipe.scale_invariant and len(x) > 1:
                robust = robust / torch.pdist(fc).pow(2).mean()
            loss = keep + recipe.beta * robust
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            sums += torch.stack([keep, robust]).detach()
            if (b + 1) % 25 == 0 and b + 1 < per_epoch:
                log(f"    batch {b + 1}/{per_epoch}, {time.perf_counter() - t0:.0f} s")
        keep_mean, robust_mean = (sums / per_epoch).tolist()
        secs = time.perf_counter() - t0
        history.append({"epoch": epoch + 1, "seconds": secs, "keep_loss": keep_mean, "robust_loss": robust_mean})
        log(f"  epoch {epoch + 1}/{recipe.epochs}: {secs:.0f} s, keep {keep_mean:.4f}, robust {robust_mean:.4f}")
        if recipe.max_seconds and time.perf_counter() - t_start > recipe.max_seconds and epoch + 1 < recipe.epochs:
            log(f"  stopped after epoch {epoch + 1}: max_seconds {recipe.max_seconds} reached")
            break
    student.eval()
    for p in student.parameters():
        p.requires_grad_(False)
    record = {"base": base, "template": template, "chip_size": size, "embedding_dim": dim,
              "recipe": asdict(recipe), "train_chips": len(pool), "epochs": history,
              "train_seconds": time.perf_counter() - t_start, "device": _device_name(device),
              "torch": torch.__version__, "threads": torch.get_num_threads()}
    record["metrics"] = _metrics(student, teacher, x_hold, recipe)
    return student.cpu(), record


def _device_name(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def export(student: nn.Module, record: dict, out: Path) -> list[Path]:
    """out.pt (TorchScript, loadable with extractors.load), out.json (its spec),
    out.weights.pt (float16 state dict: what a built-in ships), out.record.json."""
    out.parent.mkdir(parents=True, exist_ok=True)
    size = record["chip_size"]
    with _quiet_jit(), torch.no_grad():
        traced = torch.jit.trace(student, torch.rand(2, 3, size, size) * 255, check_trace=False)
    paths = [out.with_suffix(".pt"), out.with_suffix(".json"), out.with_suffix(".weights.pt"), out.with_suffix(".record.json")]
    with _quiet_jit():
        write_atomic(paths[0], lambda p: torch.jit.save(traced, p))
    spec = {"input_size": size, "template": record["template"], "mean": [0, 0, 0], "std": [1, 1, 1],
            "channel_order": "RGB", "embedding_dim": record["embedding_dim"]}
    write_atomic(paths[1], lambda p: Path(p).write_text(json.dumps(spec, indent=1)))
    half = {k: v.half() if v.is_floating_point() else v for k, v in student.state_dict().items()}
    write_atomic(paths[2], lambda p: torch.save(half, p))
    write_atomic(paths[3], lambda p: Path(p).write_text(json.dumps(record, indent=1)))
    return paths
