"""The daemon's jobs; each is one idempotent function the scheduler and ``etchacell tick`` share."""
