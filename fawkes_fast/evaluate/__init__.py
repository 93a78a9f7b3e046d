"""Measuring recognisers and protection: LFW verification, trackers, protection reports."""
