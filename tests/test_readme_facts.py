"""The README's numbers and names, read back from the code and the shipped data (issue #23): the
target bank's contents and thresholds, the modes table, the CLI synopsis and the help texts."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from fawkes_fast.cli.main import build_parser

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _subparser(name: str):
    sub = next(a for a in build_parser()._actions if a.choices and name in a.choices)
    return sub.choices[name]


def _option(parser, flag: str):
    return next(a for a in parser._actions if flag in a.option_strings)


def _bank():
    with np.load(REPO / "models" / "target_bank.npz", allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        extractors = [k[len("feat_"):] for k in z.files if k.startswith("feat_")]
        return z["names"], z["owner"], extractors, meta["thresholds"]


def _ticked(text: str) -> list[str]:
    return re.findall(r"`([^`]+)`", text)


def test_the_bank_holds_what_the_readme_says():
    names, owner, extractors, _ = _bank()
    wording = r"It holds features of ([\d,]+) LFW identities \(([\d,]+) photos, up to (\d+) each\) for (.+?), and the same-person"
    m = re.search(wording.replace(" ", r"\s+"), README)  # the README wraps its lines anywhere
    assert m, "README 'Rebuilding the shipped data' no longer describes the bank"
    count, photos, most, which = m.groups()
    assert int(count.replace(",", "")) == len(names)
    assert int(photos.replace(",", "")) == len(owner)
    assert int(most) == np.bincount(owner).max()
    assert sorted(_ticked(which)) == sorted(extractors)
    # "Bring your own model" names the extractors that targeted cloaks can use
    sentence = re.search(r"Targeted\s+cloaks\s+need\s+target-bank\s+features[^.]*\.", README)
    assert sentence and sorted(_ticked(sentence.group(0))) == sorted(extractors)


def test_the_thresholds_are_the_banks():
    _, _, extractors, thresholds = _bank()
    m = re.search(r"same-person\s+thresholds\s+\(([^)]*)\)", README)
    assert m, "README no longer states the bank's same-person thresholds"
    stated = {name.lower(): value for name, value in re.findall(r"([A-Za-z][\w-]*)\s+(\d+\.\d+)", m.group(1))}
    assert sorted(stated) == sorted(extractors)
    for name, value in stated.items():
        decimals = len(value.split(".")[1])
        assert round(thresholds[name], decimals) == float(value), f"{name}: README {value}, bank {thresholds[name]}"


def _modes_table() -> tuple[list[str], list[list[str]]]:
    lines = README.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"\|\s*mode\s*\|", line))
    cells = lambda line: [c.strip() for c in line.strip().strip("|").split("|")]  # noqa: E731
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(cells(line))
    return cells(lines[start]), rows


def _column_fields(header: str) -> tuple[str, ...]:
    """The Settings fields a column of the modes table states, recognised by its header."""
    h = header.lower()
    if h.startswith("ρ") or h.startswith("rho"):
        return ("rho",)
    if "colour" in h and "/" in h:
        return ("colour_mean", "colour_peak")
    if "steps" in h:
        return ("steps",)
    if h in ("lr", "learning rate"):
        return ("lr",)
    if h.startswith("strength"):
        return ("strength",)
    if h.startswith("dct quality"):
        return ("dct_quality",)
    return ()


def test_the_modes_table_is_modes():
    """Whatever values the modes hold: the README table states MODES, column by column."""
    from fawkes_fast.optimize.modes import MODE_EXTRACTORS, MODES

    header, rows = _modes_table()
    assert sorted(r[0].strip("`") for r in rows) == sorted(MODES)
    fields = [_column_fields(h) for h in header]
    assert ("rho",) in fields, header
    text_columns = {h.lower(): k for k, h in enumerate(header)}
    for row in rows:
        mode = row[0].strip("`")
        settings = MODES[mode]
        if "shape" in text_columns:
            assert row[text_columns["shape"]].strip("`") == settings.shape, row
        if "extractors" in text_columns:
            assert row[text_columns["extractors"]].split(" + ") == list(MODE_EXTRACTORS[mode]), row
        if "step precision" in text_columns:
            assert row[text_columns["step precision"]] == settings.precision, row
        for cell, names in zip(row, fields):
            if names == ("strength",) and settings.shape == "dssim":
                assert cell == "—", row  # a strength means nothing to the DSSIM shape
                continue
            if names == ("dct_quality",) and settings.shape != "dct":
                assert cell == "—", row
                continue
            if names == ("colour_mean", "colour_peak") and cell == "off":
                assert settings.colour_penalty == 0, row
                continue
            values = [float(v) for v in cell.split("/")] if names else []
            assert values == [pytest.approx(getattr(settings, n)) for n in names], (row[0], names, cell)


def _synopsis() -> str:
    m = re.search(r"```\n(fawkes-fast cloak PATH\.\.\..*?)```", README, re.S)
    assert m, "README lost the `fawkes-fast cloak` synopsis"
    return m.group(1)


def test_the_cli_synopsis_is_the_parser():
    """Every option of `fawkes-fast cloak` is in the README synopsis, every option there exists, and
    the choices it lists are argparse's."""
    text = _synopsis()
    stated = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", text))
    cloak = _subparser("cloak")
    actions = [a for a in cloak._actions if a.option_strings and "--help" not in a.option_strings]
    missing = [a.option_strings for a in actions if not stated & set(a.option_strings)]
    assert missing == [], f"options missing from the README synopsis: {missing}"
    known = {s for a in actions for s in a.option_strings}
    assert sorted(stated - known) == []
    for flag, listed in re.findall(r"(--[\w-]+) ([\w]+(?:\|[\w]+)+)\]", text):
        choices = _option(cloak, flag).choices
        if choices is not None:
            assert set(listed.split("|")) == set(choices), flag


def test_help_names_every_builtin_and_bank_extractor():
    from fawkes_fast.extractors import builtin_names

    cloak_help = _option(_subparser("cloak"), "--extractor").help
    assert all(name in cloak_help for name in builtin_names()), cloak_help
    extractors = re.search(r"^- Extractors:.*?(?=^- |^\S)", README, re.S | re.M).group(0)
    assert set(builtin_names()) <= set(_ticked(extractors))
    _, _, in_bank, _ = _bank()
    evaluate_help = _option(_subparser("evaluate"), "--extractor").help
    assert all(name in evaluate_help for name in in_bank), evaluate_help


def test_actors_help_says_what_the_default_is():
    """Without GPUs the default pool is a single actor, whatever the CPU count; the help said "per CPU"."""
    from fawkes_fast.distributed import actor_resources

    class CpuCluster:
        @staticmethod
        def cluster_resources():
            return {"CPU": 16.0}

    assert actor_resources(CpuCluster, None, 1, None)[0] == 1
    help_text = _option(_subparser("cloak"), "--actors").help
    assert "per CPU" not in help_text and "single" in help_text


def test_batch_size_is_described_as_it_behaves():
    """Cloaker(batch_size=N) changes what is optimised together only with batch_across_photos=True
    (tests/test_cloak_inputs.py checks the behaviour); the README must not say it means --batch-size."""
    sentences = [s for s in re.split(r"(?<=\.)\s", README) if "Cloaker(batch_size" in s]
    assert sentences, "README no longer says what Cloaker(batch_size=N) does"
    assert all("batch_across_photos" in s for s in sentences), sentences
    help_text = _option(_subparser("cloak"), "--batch-size").help
    assert "on their own" in help_text, help_text
