"""Protection against visibility as one frontier (issue #22).

Each point is a cloak (a shape at a strength), run through the seeded protection protocol against
native dlib (logistic regression / similarity matching), with every upload judged by butteraugli and
SSIMULACRA2 over the face next to the same photo's JPEG re-saves (fawkes_fast.evaluate.judges).
Resumable: a point whose JSON exists is skipped (--force reruns it).

    python bench/frontier.py --points jnd_0.6,dssim_0.017_off --users 10 --max-train 10
    python bench/frontier.py --collect             # table + plot from every JSON in --out
    python bench/frontier.py --collect --readme README.md --plot docs/frontier.png
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from protection import add_config_args, config_from, run_all  # noqa: E402

from fawkes_fast.evaluate.protocol import MID, Scenario  # noqa: E402
from fawkes_fast.evaluate.report import replace_block  # noqa: E402
from fawkes_fast.optimize.modes import BOUNDED  # noqa: E402

PERSON = {**MID, "person": True}  # eq. 3 per user: one target for the user's photos


def _jnd(strength: float, chroma: float = 0.0, **extra) -> dict:
    """The JND shape at `strength`, as first measured: 60 steps at lr 0.04, extractors in fp32."""
    return {**PERSON, **BOUNDED, "precision": "fp32", "shape": "jnd", "strength": strength, "chroma": chroma, **extra}


POINTS = {  # name -> cloak spec (fawkes_fast.evaluate.protocol); the shapes, each at several strengths
    # today's shape: free pixels under the DSSIM hinge, colour caps on / off
    "dssim_0.004": {**MID, "rho": 0.004, "steps": 40, "lr": 0.03},
    "dssim_0.007": MID,
    "dssim_0.012_off": {**MID, "rho": 0.012, "colour_penalty": 0.0},
    "dssim_0.017_off": {**MID, "rho": 0.017, "colour_penalty": 0.0},
    "dssim_0.017_off_person": {**PERSON, "rho": 0.017, "colour_penalty": 0.0},
    # a luma change bounded pixel by pixel by a JND map (texture and luminance masking)
    **{f"jnd_{s}": _jnd(s) for s in (0.12, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.2)},
    "jnd_0.5_own_target": {**_jnd(0.5), "person": False},  # what one target per person buys
    "dct_q50_s2.0_own_target": {**_jnd(2.0, shape="dct", dct_quality=50, precision="bf16"), "person": False},
    "jnd_0.5_chroma": _jnd(0.5, 0.5),  # chroma allowed at half the luma bound
    # JPEG's rounding chosen adversarially: each 8x8 DCT coefficient moves by <= strength * min(q/2, |c|)
    **{f"dct_q{q}_s{s}": _jnd(s, shape="dct", dct_quality=q, precision="bf16") for q, s in ((50, 2.0), (50, 1.8), (50, 1.6), (30, 1.0))},
    # the same DCT change bounded by JPEG steganography's cost maps (q/2 where cheaper than the median)
    **{f"{c}_{s}": _jnd(s, shape=c, dct_quality=50, precision="bf16") for c in ("uerd", "juniward") for s in (0.6,)},
    # issue #24: the step's extractors in bf16, and fewer steps at a larger rate
    "jnd_0.6_bf16": _jnd(0.6, precision="bf16"),
    **{f"jnd_{s}_bf16_30": _jnd(s, precision="bf16", steps=30, lr=0.08) for s in (0.5, 0.6)},
    **{f"dct_q50_s{s}_{n}": _jnd(s, shape="dct", dct_quality=50, precision="bf16", steps=n, lr=lr)
       for s, n, lr in ((2.0, 30, 0.08), (2.0, 40, 0.06), (2.2, 30, 0.08))},
    # fewer steps at mid's own rate and a larger bound: on 10 LFW photos (bench/visibility.py) these sat on
    # mid's line of native cosine against butteraugli, where a larger rate fell off it
    **{f"dct_q50_s{s}_{n}_lr0.04": _jnd(s, shape="dct", dct_quality=50, precision="bf16", steps=n)
       for s, n in ((2.5, 30), (2.3, 40))},
    "dct_q50_s2.5_30_lr0.04_own_target": {**_jnd(2.5, shape="dct", dct_quality=50, precision="bf16", steps=30),
                                          "person": False},
    # `high`: the joint cloak (dlib + SFace + FaceNet), judged against each native family
    **{f"joint_jnd_{s}": {**_jnd(s, precision="bf16"), "extractors": ["dlib", "sface", "facenet"]} for s in (0.8, 1.2)},
}
JOINT_TRACKERS = ("dlib", "sface", "facenet")  # native FaceNet needs TensorFlow (bench only)


def point_scenario(name: str) -> Scenario:
    joint = len(POINTS[name]["extractors"]) > 1
    return Scenario(name, POINTS[name], trackers=JOINT_TRACKERS if joint else ("dlib",), budget=True)


def rows(folder: Path) -> list[dict]:
    """One row per point result in `folder`: its spec, protection and the judges' figures."""
    out = []
    for f in sorted(folder.glob("*.json")):
        r = json.loads(f.read_text())
        if "scenario" not in r:
            continue
        s, j = r["summary"], r.get("budget", {}).get("judges", {})
        out.append({"name": r["scenario"]["name"], "spec": r["scenario"]["cloak"],
                    "logreg": s["dlib/logreg"]["protection_mean"], "logreg_std": s["dlib/logreg"]["protection_std"],
                    "match": s["dlib/match"]["protection_mean"], "match_std": s["dlib/match"]["protection_std"],
                    "users": s["dlib/logreg"]["users"], "judges": j, "box_dssim_max": r["budget"].get("box_dssim_max"),
                    "seconds_per_photo": r["cloak_seconds"] / max(r["cloaked_photos"], 1)})
    return sorted(out, key=lambda x: (x["spec"].get("shape", "dssim"), x["judges"].get("butteraugli_mean", 0)))


def table(rs: list[dict]) -> str:
    """Markdown: one line per point, then the JPEG re-saves' own figures (means over the same faces)."""
    lines = ["| point | shape | protection vs native dlib (logreg / matching) | butteraugli mean (max) | "
             "SSIMULACRA2 mean (min) | faces within q70 / q80 | box DSSIM max |",
             "|---|---|---|---|---|---|---|"]
    for r in rs:
        j, sp = r["judges"], r["spec"]
        shape = (f"{sp['shape']} ×{sp['strength']}" + (f" of q{sp['dct_quality']}'s rounding" if sp["shape"] != "jnd" else "")
                 + (f", chroma {sp['chroma']}" if sp.get("chroma") else "")
                 if sp.get("shape", "dssim") != "dssim" else f"dssim ρ {sp.get('rho', 0.007)}"
                 + (", caps off" if sp.get("colour_penalty") == 0 else ""))
        shape += "" if sp.get("person") else ", own target per photo"
        shape += f", {sp['precision']}" if sp.get("precision", "fp32") != "fp32" else ""
        shape += f", {sp['steps']} steps at lr {sp['lr']}" if sp.get("steps", 60) != 60 else ""
        within = " / ".join(f"{100 * j['resaves'][q]['share_within']:.0f}%" for q in ("70", "80")) if j.get("faces") else "—"
        lines.append(f"| `{r['name']}` | {shape} | {100 * r['logreg']:.0f} ± {100 * r['logreg_std']:.0f}% / "
                     f"{100 * r['match']:.0f} ± {100 * r['match_std']:.0f}% | "
                     f"{j.get('butteraugli_mean', float('nan')):.2f} ({j.get('butteraugli_max', float('nan')):.2f}) | "
                     f"{j.get('ssimulacra2_mean', float('nan')):.1f} ({j.get('ssimulacra2_min', float('nan')):.1f}) | "
                     f"{within} | {r['box_dssim_max']:.4f} |")
    ref = next((r["judges"] for r in rs if r["judges"].get("faces")), None)
    if ref:
        lines.append("")
        lines.append("| the same photos re-saved as JPEG | " + " | ".join(f"q{q}" for q in ref["resaves"]) + " |")
        lines.append("|---|" + "---|" * len(ref["resaves"]))
        lines.append("| butteraugli / SSIMULACRA2 (means) | " + " | ".join(
            f"{v['butteraugli_mean']:.2f} / {v['ssimulacra2_mean']:.1f}" for v in ref["resaves"].values()) + " |")
    return "\n".join(lines) + "\n"


# the paper's shape, for comparison: protection from the §10 matrix (same protocol, users and seed),
# judged on 10 other LFW photos by bench/visibility.py (these points are not from the same uploads)
PAPER_POINTS = {"paper (ρ 0.007)": ("honest-matrix/mid_dlib.json", "visibility/lfw_paper.json"),
                "paper's shape, ρ 0.017, caps off": ("honest-matrix/mid_dlib_rho0.017_colour_off.json",
                                                     "visibility/lfw_dssim_0.017_off.json")}


def paper_points(results: Path) -> list[tuple[str, float, dict]]:
    """(label, protection by logistic regression, the judges' summary) for each PAPER_POINTS found."""
    out = []
    for label, (prot, vis) in PAPER_POINTS.items():
        p, v = results / prot, results / vis
        if p.is_file() and v.is_file():
            out.append((label, json.loads(p.read_text())["summary"]["dlib/logreg"]["protection_mean"],
                        json.loads(v.read_text())["summary"]))
    return out


def plot(rs: list[dict], path: Path, extra=()) -> None:
    """Protection (y) against each judge (x), one marker per shape; vertical lines at the re-saves;
    `extra`: paper_points, drawn hollow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rs = [r for r in rs if r["judges"].get("faces")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (key, label) in zip(axes, (("butteraugli_mean", "butteraugli over the face (lower: less visible)"),
                                       ("ssimulacra2_mean", "SSIMULACRA2 over the face (higher: less visible)"))):
        groups: dict = {}
        for r in rs:
            sp = r["spec"]
            g = ("JND-masked luma" + (" + chroma" if sp.get("chroma") else "") if sp.get("shape") == "jnd"
                 else f"JPEG rounding (DCT, q{sp['dct_quality']})" if sp.get("shape") == "dct"
                 else f"DCT, {sp['shape'].upper()} cost map (q{sp['dct_quality']})" if sp.get("shape") in ("uerd", "juniward")
                 else "free pixels, DSSIM" + (" (caps off)" if sp.get("colour_penalty") == 0 else " (caps on)"))
            g += "" if sp.get("person") else ", own target"
            groups.setdefault(g, []).append(r)
        for g, pts in groups.items():
            pts = sorted(pts, key=lambda r: r["judges"][key])
            ax.plot([p["judges"][key] for p in pts], [100 * p["logreg"] for p in pts], "o-", label=g)
        for name, prot, judged in extra:
            ax.plot([judged[key]], [100 * prot], "s", mfc="none", ms=8, label=name + " (other photos)")
        for q, v in rs[0]["judges"]["resaves"].items():
            x = v[key.replace("_mean", "") + "_mean"]
            ax.axvline(x, color="grey", lw=0.8, ls="--")
            ax.text(x, 101, f"q{q}", ha="center", fontsize=8, color="grey")
        ax.axhline(95, color="red", lw=0.8, ls=":")
        ax.set_xlabel(label)
        ax.set_ylabel("protection vs native dlib, logistic regression (%)")
        if key.startswith("ssim"):
            ax.invert_xaxis()
    axes[0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", default="", help="comma list of " + ", ".join(POINTS))
    ap.add_argument("--collect", action="store_true", help="write the table (and --plot) from every result")
    ap.add_argument("--out", default=str(HERE / "results" / "frontier"))
    ap.add_argument("--plot", metavar="PNG", help="with --collect: draw the frontier there")
    ap.add_argument("--readme", metavar="FILE", help="with --collect: the table between <!-- frontier:begin/end -->")
    add_config_args(ap)
    args = ap.parse_args()
    out = Path(args.out)
    names = [n.strip() for n in args.points.split(",") if n.strip()]
    unknown = [n for n in names if n not in POINTS]
    if unknown:
        ap.error(f"unknown point(s): {', '.join(unknown)}")
    if names:
        run_all([point_scenario(n) for n in names], config_from(args), out, args.tag, args.force)
    if args.collect:
        rs = rows(out)
        md = table(rs)
        (out / "frontier.md").write_text(md)
        print(md)
        if args.plot:
            plot(rs, Path(args.plot), paper_points(out.parent))
        if args.readme and not replace_block(args.readme, "frontier", md):
            print(f"{args.readme}: no <!-- frontier:begin --> / <!-- frontier:end --> markers")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
