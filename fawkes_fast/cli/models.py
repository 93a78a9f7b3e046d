"""`fawkes-fast models build | train-robust`: build the TorchScript cache, train a robust extractor.

    fawkes-fast models build [--force]
    fawkes-fast models train-robust --data ../shared/data/lfw ../shared/data/gan-faces \\
        --holdout-min 10 --recipe cpu -o dlib-robust
    (models/README.md has the commands that made the shipped dlib-robust)
"""
from __future__ import annotations

import json
import time
from dataclasses import fields, replace
from pathlib import Path


def add_parser(sub) -> None:
    m = sub.add_parser("models", help="build or train extractor models")
    msub = m.add_subparsers(dest="action", required=True)
    b = msub.add_parser("build", help="convert the built-in models to TorchScript (cached)")
    b.add_argument("--force", action="store_true")
    b.set_defaults(func=cmd_build)
    t = msub.add_parser("train-robust", help="adversarially fine-tune a built-in extractor (paper §5.3)")
    t.add_argument("--base", default="dlib", choices=("dlib", "sface"))
    t.add_argument("--data", nargs="+", metavar="DIR", help="photo folders (recursed)")
    t.add_argument("--holdout-min", type=int, default=None,
                   help="skip identity folders with at least this many photos (keep tracker classes out)")
    t.add_argument("--chips", metavar="NPZ", help="train on chips saved by --save-chips instead of --data")
    t.add_argument("--save-chips", metavar="NPZ", help="also save the chips here")
    t.add_argument("--save-subset", type=int, metavar="N", help="save only a seeded subset of N chips")
    t.add_argument("--save-quality", type=int, default=95, help="JPEG quality of saved chips (default 95)")
    t.add_argument("--chips-only", action="store_true", help="stop after saving the chips")
    t.add_argument("--recipe", default="cpu", help="cpu (reduced, <1 h on 2 cores) or gpu")
    from ..training.recipe import Recipe

    for f in fields(Recipe):
        kind = {"float": float, "float | None": float, "bool": lambda v: v.lower() in ("1", "true", "yes")}.get(f.type, int)
        t.add_argument("--" + f.name.replace("_", "-"), type=kind, default=None, help=f"override the recipe's {f.name}")
    t.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    t.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="writes OUT.pt, OUT.json (spec), OUT.weights.pt (float16), OUT.record.json")
    t.set_defaults(func=cmd_train_robust)


def cmd_build(args) -> int:
    from ..extractors import build_builtin, builtin_names

    for name in builtin_names():
        t0 = time.perf_counter()
        path = build_builtin(name, force=args.force)
        print(f"{name}: {path} ({time.perf_counter() - t0:.1f} s)")
    return 0


def cmd_train_robust(args) -> int:
    import torch

    from ..device import resolve_device
    from ..extractors import load
    from ..training.chip_data import cut_chips, data_hash, list_photos, load_chips, save_chips, seeded_subset
    from ..training.recipe import RECIPES
    from ..training.robust import export, train

    if args.recipe not in RECIPES:
        raise SystemExit(f"--recipe must be one of {', '.join(RECIPES)}")
    recipe = replace(RECIPES[args.recipe], **{f.name: getattr(args, f.name) for f in fields(RECIPES[args.recipe])
                                               if getattr(args, f.name) is not None})
    device = resolve_device(args.device)
    ext = load(args.base)
    t0 = time.perf_counter()
    if args.chips:
        chips, sources = load_chips(args.chips, ext.template, ext.chip_size)
    elif args.data:
        photos = list_photos(args.data, args.holdout_min)
        print(f"cutting chips from {len(photos)} photos")
        chips, sources = cut_chips(photos, ext)
    else:
        raise SystemExit("give --data DIR... or --chips FILE")
    print(f"{len(chips)} chips ({time.perf_counter() - t0:.0f} s); recipe {recipe}; device {device}")
    if args.save_chips:
        kept = seeded_subset(chips, sources, args.save_subset) if args.save_subset else (chips, sources)
        save_chips(args.save_chips, *kept, ext.template, quality=args.save_quality)
        print(f"saved {len(kept[0])} chips to {args.save_chips}")
    if args.chips_only:
        return 0
    student, record = train(args.base, chips, recipe, device)
    record.update(recipe_name=args.recipe, data_hash=data_hash(sources), data_photos=len(sources),
                  data=[str(d) for d in args.data or []], chips_file=args.chips, holdout_min=args.holdout_min,
                  date=time.strftime("%Y-%m-%d"), threads=torch.get_num_threads())
    paths = export(student, record, Path(args.output))
    print(json.dumps(record["metrics"], indent=1))
    print("wrote", ", ".join(str(p) for p in paths))
    return 0
