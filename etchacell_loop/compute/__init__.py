"""Work that spans processes or machines, on Dask distributed.

Why Dask rather than a scheduler of our own: it is what the scientific Python and bio-imaging
ecosystem already runs (OME-Zarr and napari read through it; cellpose's distributed segmentation
runs on it with dask-jobqueue), it brings retries when a worker dies, worker resources (one GPU a
worker), a live dashboard, and SLURM/PBS/LSF through ``dask-jobqueue``.

- :mod:`~etchacell_loop.compute.cluster`: which cluster a command uses (``compute.scheduler``):
  none (this process), a local cluster sized to the machine, or an existing one by address or
  scheduler file;
- :mod:`~etchacell_loop.compute.tap_blocks`: block-wise TAP of a volume, one task per chunk,
  resumable from its work folder, equal voxel for voxel to :func:`etchacell_loop.model.predict.predict_volume`.

Export aggregation runs on a cluster through :func:`etchacell_loop.aggregate.run.aggregate_export`'s
``executor``: the client's ``concurrent.futures`` executor takes the place of the process pool.
"""
