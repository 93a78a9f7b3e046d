"""The seeded protection protocol (Fawkes §5-§8) on native trackers.

For each of N users (LFW identities with >= `min_user` photos, seeded pick): split the user's
photos 70/30; cloak the train part through the public API (`Cloaker.cloak`, PNG bytes from
`.encoded`, decoded as a tracker would); train each tracker's classifiers on every other
identity's clean train photos (identities with >= `min_pop` photos) plus the user's uploaded
photos; query with the user's clean test photos.

    protection = share of the user's clean test photos NOT recognised as the user
    normal     = accuracy on the other identities' test photos
Both are averaged over users (mean +- std). Cloaked photos are cached on disk per
(user photos, cloak settings, seed), clean features per identity.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..model_files import cache_dir
from . import countermeasures
from .trackers import CLASSIFIERS, cached_features, get_tracker, make_classifier, normalise

MID = {"extractors": ["dlib"], "mode": "mid", "target": "max"}


@dataclass
class Scenario:
    name: str
    cloak: dict | None = None  # None: the user uploads clean photos (baseline)
    trackers: tuple = ("dlib", "sface")
    countermeasure: str = "none"  # applied to the user's uploaded training photos
    leak: float = 0.0  # share of the user's train photos uploaded uncloaked
    sybil: int = 0  # Sybil images per clean (leaked) photo, one Sybil identity (§7.3)
    detect: bool = False  # run the §8.2 anti-detection tests
    budget: bool = False  # measure the uploads' visibility (box DSSIM, CIEDE2000; evaluate.budget)


def scenarios() -> dict[str, Scenario]:
    s = [Scenario("uncloaked"),
         Scenario("mid_dlib", MID),  # dlib->dlib (same), dlib->SFace (cross)
         Scenario("mid_sface", {**MID, "extractors": ["sface"]}),  # SFace->SFace, SFace->dlib
         Scenario("mid_joint", {**MID, "extractors": ["dlib", "sface"]})]
    # the paper's Figure 4 budgets, plus 0.005 where protection turned out to switch on
    s += [Scenario(f"rho_{r}", {**MID, "rho": r}) for r in (0.002, 0.004, 0.005, 0.007, 0.012, 0.017)]
    s += [Scenario(f"mode_{m}", {**MID, "mode": m}) for m in ("low", "high")]  # the presets as shipped
    s.append(Scenario("mid_colour_off", {**MID, "colour_penalty": 0.0}))  # what the colour limit costs
    for p in (0, 0.1, 0.2, 0.3, 0.5):
        s.append(Scenario(f"leak_{p}", MID, ("dlib",), leak=p))
        if p:  # Sybil images are made per leaked clean photo (§7.3): none to make without a leak
            s += [Scenario(f"leak_{p}_sybil{k}", MID, ("dlib",), leak=p, sybil=k) for k in (1, 2)]
    s += [Scenario(f"cm_{c}", MID, countermeasure=c) for c in countermeasures.COUNTERMEASURES if c != "none"]
    # do cloaks optimised through random blur/resize (diversity) survive those countermeasures better?
    s += [Scenario(f"cm_{c}_eot", {**MID, "diversity": 1.0}, ("dlib",), countermeasure=c) for c in ("blur", "resize50")]
    # issue #6, transfer to trackers we did not cloak with: dlib-family cloaks against the SFace trackers
    robust = {**MID, "extractors": ["dlib-robust"]}
    s += [Scenario("mid_dlib_flip", {**MID, "flip": True}),
          Scenario("mid_dlib_eot", {**MID, "diversity": 1.0}),
          Scenario("mid_dlib_robust", robust),
          Scenario("mid_dlib_robust_flip", {**robust, "flip": True}),
          Scenario("mid_dlib_robust_eot", {**robust, "diversity": 1.0}),
          Scenario("mid_dlib_ensemble", {**MID, "extractors": ["dlib", "dlib-robust"]}),
          Scenario("high_dlib_robust", {**robust, "mode": "high"}),
          # our SFace chip sits ~4 px off OpenCV's alignCrop: does jitter make SFace cloaks survive it?
          Scenario("mid_sface_eot", {**MID, "extractors": ["sface"], "diversity": 1.0}),
          Scenario("mid_joint_eot", {**MID, "extractors": ["dlib", "sface"], "diversity": 1.0})]
    s += [Scenario("detect_max", MID, detect=True),
          Scenario("detect_average_stop", {**MID, "target": "average", "stop_at": 0.2}, detect=True)]
    return {x.name: x for x in s}


@dataclass
class Config:
    lfw: str
    gan: str | None = None
    users: int = 10
    seed: int = 0
    min_user: int = 15
    min_pop: int = 10
    per_identity: int = 20  # photos per identity used (first ones by index)
    max_train: int | None = None  # cap on the user's (cloaked) train photos
    population: int | None = None  # cap on other identities (first by name); None: all
    steps: int | None = None  # override the mode's step cap
    classifiers: tuple = CLASSIFIERS
    user_names: list = field(default_factory=list)  # explicit users (else seeded pick)


def _people(lfw: Path, min_images: int) -> list[tuple[str, int]]:
    rows = [ln.split("\t") for ln in (lfw / "people.tsv").read_text().splitlines()[1:]]
    return sorted((n, int(c)) for n, c in rows if int(c) >= min_images)


def _paths(lfw: Path, name: str, count: int, cap: int) -> list[Path]:
    return [lfw / name / f"{name}_{i:04d}.jpg" for i in range(1, min(count, cap) + 1)]


def pick_users(cfg: Config) -> list[str]:
    if cfg.user_names:
        return list(cfg.user_names)
    cands = [n for n, _ in _people(Path(cfg.lfw), cfg.min_user)]
    rng = np.random.default_rng(cfg.seed)
    return sorted(rng.choice(cands, size=min(cfg.users, len(cands)), replace=False).tolist())


def split(n: int, key: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded 70/30 split of n photo indices (stable per identity)."""
    h = int(hashlib.sha1(f"{seed}:{key}".encode()).hexdigest()[:8], 16)
    order = np.random.default_rng(h).permutation(n)
    k = int(round(0.7 * n))
    return np.sort(order[:k]), np.sort(order[k:])


# ---------------------------------------------------------------- cloaking (public API only)
_cloakers: dict = {}


def _cloaker(extractors, mode):
    from fawkes_fast import Cloaker

    key = (tuple(extractors), mode)
    if key not in _cloakers:
        _cloakers[key] = Cloaker(mode=mode, extractors=tuple(extractors))
    return _cloakers[key]


def _engine_files() -> list[Path]:
    """Every installed file that can decide a cloak's pixels: the package's Python code (all but the
    evaluation modules that only measure), its compiled ops and, beside an editable install, their
    sources (csrc/), and the shipped model data (fawkes_fast.models: target bank, templates, weights)."""
    import fawkes_fast
    import fawkes_fast.models

    root = Path(fawkes_fast.__file__).parent
    measuring = root / "evaluate"
    files = [f for f in root.rglob("*.py") if f.parent != measuring or f.name == "protocol.py"]
    files += [*root.glob("*.so"), *root.glob("*.pyd")]
    csrc = root.parent / "csrc"
    files += [f for f in csrc.rglob("*") if f.is_file()] if csrc.is_dir() else []
    for models in map(Path, fawkes_fast.models.__path__):
        files += [f for ext in ("npz", "json", "pt") for f in models.glob(f"*.{ext}")]
    return sorted(set(files))


def _engine_version() -> str:
    """Hash of the installed package's content (`_engine_files`, names and bytes), so that no change of
    code, ops or shipped data ever reuses stale cloaks."""
    h = hashlib.sha1()
    for f in _engine_files():
        h.update(f"{f.parent.name}/{f.name}".encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:12]


def _models_version(extractors) -> list[str]:
    """What identifies each extractor's weights: a built-in's cache file is keyed on its model file's
    content, a file is hashed; retrained weights under the same name never reuse stale cloaks."""
    from fawkes_fast.extractors import build_builtin, is_builtin

    return [build_builtin(e).name if is_builtin(e) else hashlib.sha1(Path(e).read_bytes()).hexdigest()[:12]
            for e in extractors]


def cloak_photos(paths: list[Path], spec: dict, seed: int, steps: int | None = None):
    """The user's uploaded files for `paths` cloaked with `spec`: (list of RGB, info). Cached on disk.

    A photo the cloaker could not cloak is uploaded as it is (counted in info['failed'])."""
    from fawkes_fast.io.images import decode_image, load_image

    opts = {k: v for k, v in spec.items() if k not in ("extractors", "mode", "target", "person")}
    # "person": the user's photos are one person's (eq. 3 per user: they share one target)
    person = paths[0].parent.name if spec.get("person") and paths else None
    if steps is not None:
        opts["steps"] = steps
    key = hashlib.sha1(json.dumps([[str(p) for p in paths], spec, opts, seed, _engine_version(),
                                   _models_version(spec["extractors"])],
                                  sort_keys=True).encode()).hexdigest()[:16]
    folder = cache_dir() / "evaluate" / "cloaks" / key
    meta = folder / "info.json"
    if not meta.is_file():
        cl = _cloaker(spec["extractors"], spec["mode"])
        t0 = time.perf_counter()
        res = cl.cloak([str(p) for p in paths], seed=seed, target=spec["target"], format="png", person=person, **opts)
        secs = time.perf_counter() - t0
        errors = [f"{r.source}: {r.error}" for r in res if r.status == "error"]
        if errors:  # a broken install or model must fail the run, not pass as 0% protection
            raise RuntimeError(f"{len(errors)} of {len(res)} photos failed to cloak; first: {errors[0]}")
        folder.mkdir(parents=True, exist_ok=True)
        status = []
        for i, r in enumerate(res):
            status.append(r.status if r.status != "cloaked" else "cloaked")
            if r.status == "cloaked":
                (folder / f"{i}.png").write_bytes(r.encoded)
        info = {"seconds": secs, "status": status, "target": next((f.target for r in res for f in r.faces), None),
                "targets": [r.faces[0].target if r.faces else None for r in res],
                "dssim": [max((f.dssim for f in r.faces), default=None) for r in res],
                "errors": [r.error for r in res if r.error]}
        meta.write_text(json.dumps(info))
    info = json.loads(meta.read_text())
    imgs = [decode_image((folder / f"{i}.png").read_bytes()) if s == "cloaked" else load_image(str(p))
            for i, (p, s) in enumerate(zip(paths, info["status"]))]
    info["failed"] = sum(s != "cloaked" for s in info["status"])
    return imgs, info


def sybil_photos(refs: list[Path], gan: Path, per_photo: int, spec: dict, seed: int, steps=None,
                 candidates: int = 4):
    """§7.3: per reference (clean) photo, `per_photo` GAN faces cloaked toward it (one Sybil account)."""
    gan_files = sorted(Path(gan).glob("*.jpg"))
    rng = np.random.default_rng(seed)
    cl = _cloaker(spec["extractors"], spec["mode"])
    opts = {"steps": steps} if steps else {}
    imgs, t0 = [], time.perf_counter()
    for ref in refs:
        pick = [str(gan_files[i]) for i in rng.choice(len(gan_files), candidates, replace=False)]
        imgs += [r.image for r in cl.sybil(pick, [str(ref)], count=per_photo, seed=int(rng.integers(2**31)), **opts)]
    return imgs, time.perf_counter() - t0


# ---------------------------------------------------------------- evaluation
def _detect_tests(Xtr, ytr, user_label, cloaked, clean, seed):
    """§8.2: (a) centroid-distance test, (b) 2-means separation of cloaked vs clean user photos."""
    from sklearn.cluster import KMeans

    labels = np.unique(ytr[ytr != user_label])
    cent = normalise(np.stack([Xtr[ytr == k].mean(0) for k in labels]))
    d_pop = np.linalg.norm(Xtr[ytr != user_label][:, None] - cent[None], axis=2)
    own = np.searchsorted(labels, ytr[ytr != user_label])
    d_pop[np.arange(len(own)), own] = np.inf
    thr = np.percentile(d_pop.min(1), 5)  # flags 5% of clean photos
    stat = lambda x: np.linalg.norm(x[:, None] - cent[None], axis=2).min(1)  # noqa: E731
    out = {"centroid_threshold": float(thr), "centroid_flag_cloaked": float((stat(cloaked) < thr).mean()),
           "centroid_flag_clean_user": float((stat(clean) < thr).mean())}
    X = np.concatenate([cloaked, clean])
    truth = np.r_[np.ones(len(cloaked)), np.zeros(len(clean))]
    lab = KMeans(2, n_init=10, random_state=seed).fit_predict(X)
    out["kmeans_separation"] = float(max((lab == truth).mean(), (lab != truth).mean()))  # 0.5: inseparable
    return out


def _features(tracker, imgs):
    f = [tracker.embed_raw(x) for x in imgs]
    return np.array([v for v in f if v is not None], np.float32).reshape(-1, tracker.dim), sum(v is None for v in f)


def _population(cfg: Config, users: list[str]) -> tuple[list, dict]:
    lfw = Path(cfg.lfw)
    others = [p for p in _people(lfw, cfg.min_pop) if p[0] not in users]
    return others[:cfg.population] if cfg.population else others, dict(_people(lfw, 1))


def _uploads(sc: Scenario, cfg: Config, ui: int, paths: list[Path], tr_idx, n_leak: int, info: dict):
    """(the user's uploaded photos, None for clean ones as they are; Sybil images; seconds cloaking)."""
    secs, up, sybil = 0.0, None, []
    if sc.cloak is not None:
        imgs, ci = cloak_photos([paths[i] for i in tr_idx], sc.cloak, seed=cfg.seed + ui, steps=cfg.steps)
        info.update(cloak_failed=ci["failed"], target=ci["target"],
                    dssim_max=max([d for d in ci["dssim"] if d is not None], default=None))
        if sc.budget:
            info["budget"] = _budget([paths[i] for i in tr_idx], imgs, ci["status"])
        secs += ci["seconds"]
        up = imgs[n_leak:]
    elif sc.countermeasure != "none":
        from fawkes_fast.io.images import load_image

        up = [load_image(str(paths[i])) for i in tr_idx[n_leak:]]
    if sc.sybil:
        refs = [paths[i] for i in tr_idx[:n_leak]]  # one set of Sybils per leaked clean photo
        sybil, s = sybil_photos(refs, Path(cfg.gan), sc.sybil, sc.cloak, cfg.seed + ui, cfg.steps)
        secs += s
    return up, sybil, secs


def _budget(paths: list[Path], imgs: list, status: list[str]) -> dict:
    """Visibility of the user's cloaks: skimage over dlib's own boxes (evaluate.budget) and, where they
    are installed, the judges (evaluate.judges) over each face next to the photo's JPEG re-saves."""
    from . import budget, judges

    pairs = [(budget.decode(str(p)), img, p.stem) for p, img, s in zip(paths, imgs, status) if s == "cloaked"]
    checks = [budget.check(orig, img, name) for orig, img, name in pairs]
    out = budget.summary(checks)
    if not judges.missing():
        out["judged"] = [judges.judge_face(orig, img, c.faces[0].box).as_dict()
                         for (orig, img, _), c in zip(pairs, checks) if c.faces]
    return out


def _score(sc, cfg, tr, feats: dict, others, user, tr_idx, te_idx, n_leak, up, sybil, rng) -> dict:
    """Train tracker `tr`'s classifiers on the population + the user's uploads; query the clean photos."""
    X, y, Xte, yte = [], [], [], []
    labels = {n: k for k, (n, _) in enumerate(others)}
    for n, k in labels.items():
        f = feats[n]
        a, b = split(len(f), n, cfg.seed)
        X.append(f[a]); y += [k] * len(a); Xte.append(f[b]); yte += [k] * len(b)
    U, S = len(labels), len(labels) + 1
    uf = feats[user]
    leaked = uf[tr_idx[:n_leak]]
    if up is None:
        upf, miss = uf[tr_idx[n_leak:]], 0
    else:
        upf, miss = _features(tr, [countermeasures.apply(sc.countermeasure, x, rng) for x in up])
    sf, _ = _features(tr, sybil) if sybil else (np.zeros((0, tr.dim), np.float32), 0)
    X = np.concatenate(X + [leaked, upf, sf]); y = np.array(y + [U] * (len(leaked) + len(upf)) + [S] * len(sf))
    Xte, yte = np.concatenate(Xte), np.array(yte)
    q = uf[te_idx]
    ok, okte, okq = np.isfinite(X).all(1), np.isfinite(Xte).all(1), np.isfinite(q).all(1)
    X, y, Xte, yte, q = X[ok], y[ok], Xte[okte], yte[okte], q[okq]
    r = {"uploaded_no_face": int(miss), "queries": int(len(q)), "user_train_features": int((y == U).sum())}
    for c in cfg.classifiers:
        raw = c == "match"
        clf = make_classifier(c, tr).fit(X if raw else normalise(X), y)
        pq = clf.predict(q if raw else normalise(q)) if len(q) else np.array([])
        pn = clf.predict(Xte if raw else normalise(Xte))
        r[c] = {"protection": float((pq != U).mean()) if len(q) else None, "normal": float((pn == yte).mean())}
    if sc.detect and sc.cloak is not None and len(upf):
        r["detect"] = _detect_tests(normalise(X), y, U, normalise(upf), normalise(q), cfg.seed)
    return r


def run_scenario(sc: Scenario, cfg: Config, log=print) -> dict:
    lfw = Path(cfg.lfw)
    users = pick_users(cfg)
    others, counts = _population(cfg, users)
    trackers = {t: get_tracker(t, lfw) for t in sc.trackers}
    clean = {t: {} for t in trackers}  # tracker -> identity -> raw features (NaN rows: no face)
    for t, tr in trackers.items():
        for name in [n for n, _ in others] + users:
            clean[t][name] = cached_features(tr, _paths(lfw, name, counts[name], cfg.per_identity))
    per_user, cloak_secs, cloak_photos_n = [], 0.0, 0
    for ui, user in enumerate(users):
        paths = _paths(lfw, user, counts[user], cfg.per_identity)
        tr_idx, te_idx = split(len(paths), user, cfg.seed)
        if cfg.max_train:
            tr_idx = tr_idx[:cfg.max_train]
        n_leak = int(round(sc.leak * len(tr_idx)))
        rng = np.random.default_rng([cfg.seed, ui])
        info = {"user": user, "train": len(tr_idx), "test": len(te_idx), "leaked": n_leak}
        up, sybil, secs = _uploads(sc, cfg, ui, paths, tr_idx, n_leak, info)
        cloak_secs += secs
        cloak_photos_n += len(tr_idx) if sc.cloak is not None else 0
        info["trackers"] = {t: _score(sc, cfg, tr, clean[t], others, user, tr_idx, te_idx, n_leak, up, sybil, rng)
                            for t, tr in trackers.items()}
        per_user.append(info)
        res = info["trackers"]
        log(f"  {sc.name} {user}: " + ", ".join(f"{t}/{c} prot {res[t][c]['protection']}" for t in res
                                                for c in cfg.classifiers if c in ("logreg", "match")))
    out = {"scenario": asdict(sc), "config": asdict(cfg), "users": users, "per_user": per_user,
           "summary": summarise(per_user, sc.trackers, cfg.classifiers),
           "cloak_seconds": cloak_secs, "cloaked_photos": cloak_photos_n,
           "thresholds": {t: float(tr.threshold) for t, tr in trackers.items()}}
    if sc.budget:
        out["budget"] = _budget_summary([u["budget"] for u in per_user if "budget" in u])
    return out


def _budget_summary(rows: list[dict]) -> dict:
    """Per-user budget figures pooled: worst box DSSIM and p99 ΔE, mean of the users' mean ΔE."""
    from . import judges

    rows = [r for r in rows if r.get("faces")]
    if not rows:
        return {"faces": 0}
    judged = [f for r in rows for f in r.get("judged", [])]
    return {"judges": judges.summary(judged), "faces": sum(r["faces"] for r in rows),
            "box_dssim_max": max(r["box_dssim_max"] for r in rows),
            "box_dssim_mean": float(np.mean([r["box_dssim_mean"] for r in rows])),
            "mean_de": float(np.average([r["mean_de_mean"] for r in rows], weights=[r["faces"] for r in rows])),
            "p99_de_max": max(r["p99_de_max"] for r in rows)}


def summarise(per_user, trackers, classifiers) -> dict:
    out = {}
    for t in trackers:
        for c in classifiers:
            p = [u["trackers"][t][c]["protection"] for u in per_user if u["trackers"][t][c]["protection"] is not None]
            n = [u["trackers"][t][c]["normal"] for u in per_user]
            out[f"{t}/{c}"] = {"protection_mean": float(np.mean(p)) if p else None, "protection_std": float(np.std(p)) if p else None,
                               "normal_mean": float(np.mean(n)), "normal_std": float(np.std(n)), "users": len(p)}
        d = [u["trackers"][t]["detect"] for u in per_user if "detect" in u["trackers"][t]]
        if d:
            out[f"{t}/detect"] = {k: float(np.mean([x[k] for x in d])) for k in d[0]}
    return out
