"""Aggregate a classification export offline: every subject's consensus as files.

``reading`` turns export rows into placed drawings (in worker processes: JSON decoding is the
costly part), ``outputs`` writes masks, bands, confidence maps and the CSV reports, and ``run``
drives both over a process pool: read, vote every slice, pool each volunteer's agreement across
slices, vote again where it matters.
"""
