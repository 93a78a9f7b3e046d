"""Protection matrix (issue #5): run scenarios of fawkes_fast.evaluate.protocol, write JSON,
a Markdown table and plots into bench/results/. Resumable: a scenario whose JSON exists is skipped.

    python bench/protection.py --scenarios uncloaked,mid_dlib,rho_0.004 --users 3 --max-train 10
    python bench/protection.py --scenarios all --users 10          # the full matrix (GPU advised)
    python bench/protection.py --scenarios mid_dlib --set colour_mean=2.0 --tag _cm2   # one option changed
    python bench/protection.py --scenarios mid_dlib --set rho=0.017 --tag _rho0.017 --budget   # with visibility
    python bench/protection.py --list
    python bench/protection.py --scenarios all --users 10 --max-train 10 --out bench/results/users10 --readme README.md
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from fawkes_fast.evaluate.protocol import Config, run_scenario, scenarios  # noqa: E402
from fawkes_fast.evaluate.report import markdown_table, plot_results, replace_block, summary_table  # noqa: E402
from fawkes_fast.evaluate.trackers import CLASSIFIERS  # noqa: E402


def add_config_args(ap: argparse.ArgumentParser, users: int = 10) -> None:
    """The protocol's Config as command-line options (shared with bench/lofo.py)."""
    ap.add_argument("--lfw", default=str(HERE.parent.parent / "shared" / "data" / "lfw"))
    ap.add_argument("--gan", default=str(HERE.parent.parent / "shared" / "data" / "gan-faces"))
    ap.add_argument("--users", type=int, default=users)
    ap.add_argument("--user", action="append", default=[], help="explicit LFW user (repeatable)")
    ap.add_argument("--max-train", type=int, default=None, help="cap on each user's cloaked train photos")
    ap.add_argument("--per-identity", type=int, default=20, help="photos used per LFW identity")
    ap.add_argument("--population", type=int, default=None, help="cap on other identities")
    ap.add_argument("--steps", type=int, default=None, help="override the mode's step cap")
    ap.add_argument("--classifiers", default=",".join(CLASSIFIERS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="", help="suffix of result file names (e.g. a run's setting)")
    ap.add_argument("--force", action="store_true", help="rerun scenarios whose JSON exists")


def add_set_arg(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a cloaking option of every chosen scenario, e.g. colour_penalty=0 "
                         "(repeatable; give a --tag so results do not overwrite the presets')")


def cloak_overrides(ap: argparse.ArgumentParser, args) -> dict:
    """--set KEY=VALUE pairs (values are JSON) as a dict; refuses them without a --tag."""
    overrides = {}
    for kv in args.set:
        key, _, value = kv.partition("=")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            ap.error(f"--set {kv}: the value must be JSON (a number, true/false, or a quoted string)")
    if overrides and not args.tag:
        ap.error("--set needs a --tag, so the results do not overwrite the presets'")
    return overrides


def config_from(args) -> Config:
    return Config(lfw=args.lfw, gan=args.gan, users=args.users, seed=args.seed, max_train=args.max_train,
                  per_identity=args.per_identity, population=args.population, steps=args.steps,
                  classifiers=tuple(args.classifiers.split(",")), user_names=args.user)


def run_all(scenarios_: list, cfg: Config, out: Path, tag: str = "", force: bool = False) -> list[dict]:
    """Run each scenario unless its JSON (out/NAME+tag.json) exists; returns every result."""
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for sc in scenarios_:
        path = out / f"{sc.name}{tag}.json"
        if path.is_file() and not force:
            print(f"{sc.name}: exists, skipped ({path})")
            results.append(json.loads(path.read_text()))
            continue
        t0 = time.time()
        print(f"{sc.name}: running", flush=True)
        r = run_scenario(sc, cfg, log=lambda s: print(s, flush=True))
        r["wall_seconds"] = time.time() - t0
        path.write_text(json.dumps(r, indent=1))
        results.append(r)
        print(f"{sc.name}: {r['wall_seconds']:.0f} s", flush=True)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenarios", default="uncloaked,mid_dlib", help="comma list, or 'all'")
    ap.add_argument("--list", action="store_true", help="list scenario names and exit")
    add_config_args(ap)
    add_set_arg(ap)
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--budget", action="store_true", help="also measure each cloaked upload's visibility "
                    "(box DSSIM and CIEDE2000 over dlib's own boxes, skimage; evaluate.budget)")
    ap.add_argument("--before", metavar="DIR", help="with --readme: put native dlib's figures from an earlier "
                    "run's JSON files in DIR (same scenario names) beside the new ones")
    ap.add_argument("--before-label", default="before", help="that column's heading")
    ap.add_argument("--readme", metavar="FILE", help="write the summary table between the "
                    "<!-- protection:begin/end --> markers of FILE (e.g. README.md)")
    args = ap.parse_args()

    table = scenarios()
    if args.list:
        print("\n".join(table))
        return 0
    names = list(table) if args.scenarios == "all" else [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [n for n in names if n not in table]
    if unknown:
        ap.error(f"unknown scenario(s): {', '.join(unknown)}; see --list")
    overrides = cloak_overrides(ap, args)
    chosen = [replace(table[n], cloak={**table[n].cloak, **overrides}) if overrides and table[n].cloak else table[n]
              for n in names]
    if args.budget:
        chosen = [replace(sc, budget=True) if sc.cloak else sc for sc in chosen]
    out = Path(args.out)
    results = run_all(chosen, config_from(args), out, args.tag, args.force)
    md = markdown_table(results)
    (out / f"protection{args.tag}.md").write_text(md)
    plots = plot_results(results, out)
    before = ({p.stem: json.loads(p.read_text()) for p in Path(args.before).glob("*.json")}
              if args.before else None)
    if args.readme and not replace_block(args.readme, "protection", summary_table(results, before, args.before_label)):
        print(f"{args.readme}: no <!-- protection:begin --> / <!-- protection:end --> markers; summary not written")
    print(md)
    print("plots:", ", ".join(str(p) for p in plots))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
