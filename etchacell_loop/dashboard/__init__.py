"""The ops dashboard: the loop at a glance in a browser, and a guarded retrain button.

``create_app`` (in :mod:`.app`) builds the web application over an engine it is given; ``etchacell
dashboard`` serves it. Pages read the named queries of ``ops/queries/`` (:mod:`.pages`), charts are
inline SVG (:mod:`.charts`), a consensus is drawn over its slice on the server (:mod:`.overlay`), and
actions go through the same library calls as the CLI (:mod:`.actions`), behind the operator token
(:mod:`.security`).
"""
