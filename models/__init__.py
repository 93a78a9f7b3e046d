"""Data files that ship with fawkes_fast (installed as the package `fawkes_fast.models`).

Only numbers our own scripts derived (target-bank features, weights we trained) live
here, each with the script that rebuilds it; never images.
"""
