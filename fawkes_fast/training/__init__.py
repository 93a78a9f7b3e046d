"""Model-building tooling, kept apart from the runtime: adversarially robust fine-tuning of a
built-in extractor (`robust.py`, `fawkes-fast models train-robust`) and the aligned face chips
it trains on (`chip_data.py`). Template calibration scripts live in models/.
"""
