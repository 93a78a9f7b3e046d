"""Measuring recognisers and protection: LFW verification, native trackers, the seeded protection
protocol (protocol.py), tracker-side countermeasures, reports, the user's own check (user_check.py),
an independent check of a saved cloak's DSSIM and colour (budget.py), and the visibility judges,
butteraugli and SSIMULACRA2 next to JPEG re-saves (judges.py; never used by the optimiser)."""
from __future__ import annotations

__all__ = ["NativeDlib", "NativeSFace", "NativeFaceNet", "Config", "Scenario", "run_scenario", "scenarios", "check"]


def __getattr__(name):  # lazy: importing the package stays cheap
    import importlib

    where = {"NativeDlib": "trackers", "NativeSFace": "trackers", "NativeFaceNet": "trackers",
             "Config": "protocol", "Scenario": "protocol", "run_scenario": "protocol", "scenarios": "protocol",
             "check": "user_check"}
    if name in where:
        return getattr(importlib.import_module(f"{__name__}.{where[name]}"), name)
    raise AttributeError(name)
