"""Synthetic nuclei, synthetic volunteers and synthetic Zooniverse exports, all with known truth.

Real exports come without truth: nobody knows the envelope a volunteer meant to trace. These modules
make crowds whose every mistake is known (``crowd``), on nuclei whose every slice is known
(``shapes``), written as a classification export in the exact format Panoptes writes (``export``), so
the consensus, the retirement rule and the loop can be measured against the truth they approximate.
"""
