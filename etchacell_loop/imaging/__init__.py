"""Volumes of electron microscopy: reading and writing them, synthetic ones with known truth, and the
subjects volunteers are shown."""
