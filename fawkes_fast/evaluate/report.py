"""Tables and plots for protection results (the dicts `protocol.run_scenario` returns)."""
from __future__ import annotations

from pathlib import Path


def _pm(m, s, pct=True):
    if m is None:
        return "n/a"
    return f"{100 * m:.0f} ± {100 * s:.0f}%" if pct else f"{m:.3f} ± {s:.3f}"


def markdown_table(results: list[dict]) -> str:
    """One row per scenario x tracker x classifier: protection, normal accuracy, users, cloak time."""
    lines = ["| scenario | cloak | tracker | classifier | protection (mean ± std) | normal accuracy | users | photos cloaked | cloak s/photo |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        sc, cl = r["scenario"], r["scenario"]["cloak"]
        desc = "none (clean upload)" if cl is None else "+".join(cl["extractors"]) + " " + ", ".join(
            f"{k}={v}" for k, v in cl.items() if k != "extractors")
        extra = [f"cm={sc['countermeasure']}" if sc["countermeasure"] != "none" else "",
                 f"leak={sc['leak']}" if sc["leak"] else "", f"sybil={sc['sybil']}/photo" if sc["sybil"] else ""]
        desc += "".join(f"; {e}" for e in extra if e)
        per = r["cloak_seconds"] / r["cloaked_photos"] if r["cloaked_photos"] else None
        for key, v in r["summary"].items():
            if key.endswith("/detect"):
                continue
            t, c = key.split("/")
            lines.append(f"| {sc['name']} | {desc} | {t} | {c} | {_pm(v['protection_mean'], v['protection_std'])} | "
                         f"{_pm(v['normal_mean'], v['normal_std'])} | {v['users']} | {r['cloaked_photos']} | "
                         f"{'' if per is None else f'{per:.1f}'} |")
    det = [(r["scenario"]["name"], k.split("/")[0], v) for r in results for k, v in r["summary"].items() if k.endswith("/detect")]
    if det:
        lines += ["", "| scenario | tracker | centroid test: cloaked flagged | clean user flagged | 2-means separation (0.5 = none) |",
                  "|---|---|---|---|---|"]
        lines += [f"| {n} | {t} | {100 * v['centroid_flag_cloaked']:.0f}% | {100 * v['centroid_flag_clean_user']:.0f}% | "
                  f"{v['kmeans_separation']:.2f} |" for n, t, v in det]
    return "\n".join(lines) + "\n"


def _cell(summary: dict, tracker: str) -> str:
    a, b = summary.get(f"{tracker}/logreg"), summary.get(f"{tracker}/match")
    if not a or a["protection_mean"] is None:
        return "—"
    return (f"{100 * a['protection_mean']:.0f} ± {100 * a['protection_std']:.0f}% / "
            f"{100 * b['protection_mean']:.0f} ± {100 * b['protection_std']:.0f}%")


def summary_table(results: list[dict], before: dict[str, dict] | None = None, before_label: str = "before") -> str:
    """One row per scenario: protection (logistic regression / similarity matching) per tracker. With
    `before` (scenario name -> an earlier result), native dlib's earlier figures stand beside the new ones."""
    trackers = [t for t in ("dlib", "sface", "facenet") if any(f"{t}/logreg" in r["summary"] for r in results)]
    heads = [f"native {t}: logreg / matching" for t in trackers]
    if before is not None:
        heads.insert(1, f"native dlib, {before_label}")
    lines = [f"| scenario | {' | '.join(heads)} | normal accuracy (dlib, logreg) |", "|---|" + "---|" * (len(heads) + 1)]
    for r in results:
        name = r["scenario"]["name"]
        cells = [_cell(r["summary"], t) for t in trackers]
        if before is not None:
            cells.insert(1, _cell(before[name]["summary"], "dlib") if name in before else "—")
        n = r["summary"].get("dlib/logreg")
        normal = "—" if not n else f"{100 * n['normal_mean']:.1f}%"
        lines.append(f"| `{name}` | " + " | ".join(cells) + f" | {normal} |")
    return "\n".join(lines) + "\n"


def replace_block(path, name: str, text: str) -> bool:
    """Put `text` between `<!-- name:begin -->` and `<!-- name:end -->` in a file; False if no markers."""
    path = Path(path)
    doc = path.read_text()
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if begin not in doc or end not in doc:
        return False
    head, rest = doc.split(begin, 1)
    path.write_text(head + begin + "\n" + text + rest[rest.index(end):])
    return True


def plot_results(results: list[dict], out_dir, classifier: str = "logreg") -> list[Path]:
    """Bar chart of protection per scenario and tracker, and the budget sweep if present."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    paths = []
    names = [r["scenario"]["name"] for r in results]
    trackers = sorted({k.split("/")[0] for r in results for k in r["summary"] if not k.endswith("/detect")})
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(names)), 4))
    w = 0.8 / max(len(trackers), 1)
    for j, t in enumerate(trackers):
        xs, ms, ss = [], [], []
        for i, r in enumerate(results):
            v = r["summary"].get(f"{t}/{classifier}")
            if v and v["protection_mean"] is not None:
                xs.append(i + j * w); ms.append(100 * v["protection_mean"]); ss.append(100 * v["protection_std"])
        ax.bar(xs, ms, w, yerr=ss, label=f"tracker {t}", capsize=3)
    ax.set_xticks([i + w * (len(trackers) - 1) / 2 for i in range(len(names))], names, rotation=30, ha="right")
    ax.set_ylabel(f"protection success (%), {classifier}"); ax.set_ylim(0, 105); ax.legend()
    fig.tight_layout(); p = out_dir / f"protection_{classifier}.png"; fig.savefig(p, dpi=110); plt.close(fig)
    paths.append(p)
    sweep = sorted(((r["scenario"]["cloak"]["rho"] if "rho" in r["scenario"]["cloak"] else 0.007), i, r)
                   for i, r in enumerate(results) if r["scenario"]["name"].startswith("rho_") or r["scenario"]["name"] == "mid_dlib")
    sweep = [(rho, r) for rho, _, r in sweep]  # mid_dlib is the rho = 0.007 point (mode "mid")
    if len(sweep) >= 2:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for t in trackers:
            pts = [(rho, 100 * r["summary"][f"{t}/{classifier}"]["protection_mean"]) for rho, r in sweep
                   if f"{t}/{classifier}" in r["summary"]]
            ax.plot(*zip(*pts), "o-", label=f"tracker {t}")
        ax.set_xlabel("DSSIM budget rho"); ax.set_ylabel("protection (%)"); ax.set_ylim(0, 105); ax.legend()
        fig.tight_layout(); p = out_dir / "budget_sweep.png"; fig.savefig(p, dpi=110); plt.close(fig)
        paths.append(p)
    return paths
