"""``etchacell predict`` (a model's tri-axis prediction of a volume) and ``etchacell evaluate``
(a prediction against a reference, as the paper's Table 1).

Why the model stack is imported inside the commands, after the arguments are checked: it takes
seconds to load (TensorFlow alone, tens), and a mistyped ROI or option should say so at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from etchacell_loop.cli.context import (
    CommandError,
    PhaseBars,
    console,
    err_console,
    operator_errors,
    require_schema,
    state,
)

if TYPE_CHECKING:
    from etchacell_loop.compute.tap_blocks import KerasArtifact
    from etchacell_loop.imaging.volume import LazyVolume, RoiBox
    from etchacell_loop.model.backend import BackendChoice
    from etchacell_loop.model.predict import VolumePrediction
    from etchacell_loop.model.presets import ModelPreset
    from etchacell_loop.model.tap import TapParams, TapRule

PROMOTED = "promoted"
# The library's defaults (``model.tap``, ``model.predict``, ``model.evaluation``; a test keeps them
# equal), named here so that `--help` answers without importing the model stack.
TAP_RULES = ("all", "majority", "any")
DEFAULT_MIN_COMPONENT_VOXELS = 10_000
DEFAULT_CHUNK_ZYX = (64, 256, 256)
DEFAULT_LABEL = "envelope"
PHASES = {"resampling": "resampling to model voxels", "predicting": "predicting", "post-processing": "components"}


@operator_errors
def predict(
    ctx: typer.Context,
    volume_path: Annotated[Path, typer.Argument(metavar="VOLUME", help="OME-Zarr, TIFF stack or folder of TIFFs")],
    model: Annotated[
        str, typer.Option("--model", "-m", help=f"model version in the database, {PROMOTED!r}, or a .keras file")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="the OME-Zarr to write, e.g. pred.zarr")],
    tap: Annotated[bool, typer.Option("--tap/--no-tap", help="predict along all three axes (TAP) or z only")] = True,
    rule: Annotated[str, typer.Option(help=f"how the axes combine: {', '.join(TAP_RULES)}")] = "all",
    roi: Annotated[
        str | None, typer.Option(help="predict one ROI: a name the volume lists, or a box X,Y,Z,WIDTH,HEIGHT,DEPTH")
    ] = None,
    min_component_voxels: Annotated[
        int, typer.Option(help="remove envelope pieces smaller than this (model voxels)")
    ] = DEFAULT_MIN_COMPONENT_VOXELS,
    keep_largest: Annotated[
        bool | None,
        typer.Option(
            "--keep-largest/--no-keep-largest",
            help="keep only the largest piece, the ROI's nucleus",
            show_default="on with --roi, off for the whole volume",
        ),
    ] = None,
    voxel_size_nm: Annotated[
        str | None, typer.Option(help="source voxel size Z,Y,X in nm", show_default="from the file")
    ] = None,
    chunk: Annotated[str, typer.Option(help="chunk of model voxels Z,Y,X predicted at a time")] = ",".join(
        map(str, DEFAULT_CHUNK_ZYX)
    ),
    batch_size: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="windows per model call (larger fills an accelerator, needs more memory)",
            show_default="8 on a CPU, 32 on an accelerator",
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="replace OUT if it exists")] = False,
    resume: Annotated[
        bool, typer.Option(help="continue an interrupted run into OUT, skipping the chunks it finished")
    ] = False,
    scheduler: Annotated[
        str | None,
        typer.Option(
            help="local (a Dask cluster of this machine: the default), none (this process), or a Dask scheduler"
            " address or file",
            show_default="compute.scheduler",
        ),
    ] = None,
) -> None:
    """Tri-axis prediction of the nuclear envelope; writes the probability and the envelope as OME-Zarr.

    By default the chunks are shared among a Dask cluster of this machine's cores (one worker a GPU);
    --scheduler names an existing cluster (docs/cluster.md). Such a run can be resumed."""
    from etchacell_loop.compute.tap_blocks import KerasArtifact
    from etchacell_loop.imaging.volume import VolumeError, open_volume
    from etchacell_loop.model.predict import PredictError, predict_volume
    from etchacell_loop.model.tap import TRI_AXES, TapError, TapParams

    if rule not in TAP_RULES:
        raise CommandError(f"--rule {rule!r}: expected one of {', '.join(TAP_RULES)}")
    if min_component_voxels < 0:
        raise CommandError(f"--min-component-voxels must not be negative, not {min_component_voxels}")
    from etchacell_loop.compute.cluster import ClusterError, in_process, resolve_scheduler

    settings = state(ctx).settings
    chosen = resolve_scheduler(scheduler or settings.compute.scheduler, "predict")
    if resume and in_process(chosen):
        raise CommandError("--resume needs a Dask cluster (--scheduler local or an address), not --scheduler none")
    if out.exists() and not (overwrite or resume):
        raise CommandError(f"{out} already exists (use --overwrite to replace it, or --resume to continue it)")
    chunk_zyx = _triple(_parse_ints(chunk, 3, "--chunk"))
    artifact, described = _resolve_model(ctx, model)
    try:
        volume = open_volume(volume_path, voxel_size_nm=_voxel(voxel_size_nm))
    except VolumeError as exc:
        raise CommandError(str(exc)) from None
    with volume:
        box = _roi_in(volume, roi) if roi else None
        on_cluster = not in_process(chosen)
        if on_cluster:
            preset, predict_fn = _preset_only(artifact), None
        else:
            predict_fn, preset = _load(artifact, settings.training.backend, batch_size)
        attrs = {**described, "preset": preset.name}
        try:
            params = TapParams(
                patch_zyx=preset.patch_zyx,
                axes=TRI_AXES if tap else (0,),
                rule=_rule(rule),
                min_component_voxels=min_component_voxels,
                keep_largest=largest_only(keep_largest, box),
                batch_size=batch_size,
            )
            if on_cluster:
                source = KerasArtifact(artifact.resolve(), settings.training.backend, batch_size)
                job = ClusterJob(volume, source, preset, out, params, box, chunk_zyx, overwrite, resume, attrs)
                report = _predict_on_cluster(chosen, settings.compute.workers, job)
            else:
                assert predict_fn is not None
                with PhaseBars(PHASES, "{task.completed}/{task.total} chunks", width=28) as bars:
                    report = predict_volume(
                        volume, predict_fn, preset, out, params=params, roi=box, chunk_zyx=chunk_zyx,
                        overwrite=overwrite, model_attrs=attrs, progress=bars.update,
                    )  # fmt: skip
        except (PredictError, TapError, VolumeError, FileExistsError, ClusterError) as exc:
            raise CommandError(str(exc)) from None
    _print_prediction(report, min_component_voxels)


@dataclass(frozen=True)
class ClusterJob:
    """A prediction to run as tasks on a Dask cluster (``compute.tap_blocks``)."""

    volume: LazyVolume
    model: KerasArtifact
    preset: ModelPreset
    out: Path
    params: TapParams
    roi: RoiBox | None
    chunk_zyx: tuple[int, int, int]
    overwrite: bool
    resume: bool
    model_attrs: dict[str, Any]


def _predict_on_cluster(scheduler: str, workers: int | None, job: ClusterJob) -> VolumePrediction:
    """``job`` on the cluster ``scheduler`` names: this process reads only the model's preset,
    each worker loads the model once. The dashboard's address goes to stderr."""
    from etchacell_loop.compute.cluster import dashboard_line, model_resources, open_client
    from etchacell_loop.compute.tap_blocks import predict_volume_blocks

    with open_client(scheduler, workers=workers) as client:
        assert client is not None  # not "none": the caller checked
        err_console.print(dashboard_line(client), highlight=False, soft_wrap=True)
        with PhaseBars(PHASES, "{task.completed}/{task.total} chunks", width=28) as bars:
            return predict_volume_blocks(
                client, job.volume, job.model, job.preset, job.out, params=job.params, roi=job.roi,
                chunk_zyx=job.chunk_zyx, overwrite=job.overwrite, resume=job.resume, model_attrs=job.model_attrs,
                progress=bars.update, resources=model_resources(client),
            )  # fmt: skip


def _preset_only(artifact: Path) -> ModelPreset:
    """The artefact's preset, read without the model stack (the workers load the model)."""
    from etchacell_loop.model.artifact import ArtifactError, read_preset

    try:
        return read_preset(artifact)
    except ArtifactError as exc:
        raise CommandError(str(exc)) from None


@operator_errors
def evaluate(
    pred: Annotated[Path, typer.Argument(help="predicted envelope: OME-Zarr (labels/envelope or image) or TIFF")],
    gt: Annotated[Path, typer.Argument(help="reference envelope, e.g. a synthetic volume (its labels/envelope)")],
    label: Annotated[str, typer.Option(help="label image to compare, when a volume has it")] = DEFAULT_LABEL,
    pixel_size_nm: Annotated[
        float | None,
        typer.Option(
            help="pixel size of the prediction's grid, when its file does not say", show_default="from the file"
        ),
    ] = None,
    central_slice: Annotated[
        int | None, typer.Option(help="plane of the prediction for the area F-measure", show_default="the central one")
    ] = None,
    name: Annotated[str | None, typer.Option(help="row name", show_default="the prediction's file name")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the figures as JSON")] = False,
) -> None:
    """The paper's Table 1 figures: envelope F-measure, recall, precision, AHD, area F-measure.

    A prediction made by etchacell predict, against a reference on the source grid, is scored at the
    source resolution, as the paper's Table 1 (the prediction scaled back up), and on its own grid."""
    from etchacell_loop.imaging.volume import VolumeError
    from etchacell_loop.model.evaluation import EvaluationError, evaluate_paths
    from etchacell_loop.model.metrics import render_table1

    if pixel_size_nm is not None and not pixel_size_nm > 0:
        raise CommandError(f"--pixel-size-nm must be positive, not {pixel_size_nm}")
    try:
        evaluation = evaluate_paths(pred, gt, label=label, pixel_size_nm=pixel_size_nm, central_slice=central_slice)
    except (EvaluationError, VolumeError) as exc:
        raise CommandError(str(exc)) from None
    row_name = name or pred.name
    if as_json:
        figures: dict[str, Any] = {"name": row_name, **evaluation.primary.as_dict()}
        figures["resolution"] = "source" if evaluation.source is not None else "as given"
        if evaluation.source is not None:
            figures["model_grid"] = evaluation.model_grid.as_dict()
        console.print_json(json.dumps(figures))
        return
    rows = {row_name: evaluation.model_grid}
    if evaluation.source is not None:
        grid_nm = evaluation.model_grid.pixel_size_nm
        rows = {
            f"{row_name} (source, {evaluation.source.pixel_size_nm:g} nm)": evaluation.source,
            f"{row_name} (model grid, {grid_nm:g} nm; secondary)": evaluation.model_grid,
        }
    console.print(render_table1(rows), highlight=False, soft_wrap=True)


def largest_only(keep_largest: bool | None, roi: RoiBox | None) -> bool:
    """``--keep-largest`` as given, else on for an ROI (the paper isolates each ROI's nucleus as its
    largest envelope component, section 4.12) and off for a whole volume, where every nucleus is
    wanted."""
    return roi is not None if keep_largest is None else keep_largest


def _resolve_model(ctx: typer.Context, model: str) -> tuple[Path, dict[str, Any]]:
    """An artefact path, or a version's (``promoted``: the promoted one's) from the database."""
    candidate = Path(model)
    if candidate.is_file():
        return candidate, {"artifact": str(candidate.resolve())}
    if candidate.suffix == ".keras" or "/" in model:
        raise CommandError(f"{model}: no such model file")
    from etchacell_loop.db.engine import session_scope
    from etchacell_loop.model.registry import RegistryError, find_version, promoted_version

    with state(ctx).engine() as engine:
        require_schema(engine)
        with session_scope(engine) as session:
            try:
                version = promoted_version(session) if model == PROMOTED else find_version(session, model)
            except RegistryError as exc:
                raise CommandError(f"{exc}; and there is no file {model!r}") from None
            if version is None:
                raise CommandError("no model version is promoted")
            described = {"version": version.version, "artifact": version.artifact_uri}
    artifact = Path(version.artifact_uri.removeprefix("file://"))
    if not artifact.is_file():
        raise CommandError(f"model version {described['version']}: its artefact {artifact} is missing")
    return artifact, described


def _load(artifact: Path, backend: BackendChoice = "auto", batch_size: int | None = None) -> Any:
    """The artefact's ``(predict_fn, preset)``; Keras is imported only here, on the backend that
    ``training.backend`` chooses (the ``ml-*`` extras). The model takes each TAP batch in one call
    (``batch_size``, or the automatic size once the backend is known), not in the preset's
    training batches."""
    from etchacell_loop.model.backend import BackendError, select_backend
    from etchacell_loop.model.tap import resolve_batch_size

    try:
        select_backend(backend)
        from etchacell_loop.model.keras_io import load_predict_fn
    except BackendError as exc:
        raise CommandError(str(exc)) from None
    except ImportError as exc:
        raise CommandError(f"predicting needs Keras (install an ml-jax, ml-torch or ml-tf extra): {exc}") from None
    try:
        return load_predict_fn(artifact, resolve_batch_size(batch_size))
    except (ValueError, OSError) as exc:
        raise CommandError(f"{artifact}: cannot load the model ({str(exc).strip().splitlines()[0]})") from None


def _roi_in(volume: LazyVolume, text: str) -> RoiBox:
    """The ROI ``--roi`` names, checked against the volume's extent before the model is loaded."""
    from etchacell_loop.imaging.volume import VolumeError

    box = _roi(text, volume.rois)
    try:
        box.clipped(volume.shape_zyx)
    except VolumeError as exc:
        raise CommandError(f"--roi {text!r}: {exc}") from None
    return box


def _roi(text: str, known: tuple[RoiBox, ...]) -> RoiBox:
    from etchacell_loop.imaging.volume import RoiBox

    for box in known:
        if box.name == text:
            return box
    if text.count(",") == 5:
        x, y, z, width, height, depth = _parse_ints(text, 6, "--roi")
        return RoiBox("roi", x, y, z, width, height, depth)
    names = ", ".join(box.name for box in known) or "none"
    raise CommandError(f"--roi {text!r}: not an ROI of the volume (ROIs: {names}) nor a box X,Y,Z,W,H,D")


def _parse_ints(text: str, n: int, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != n or any(v < 0 for v in values) or (option != "--roi" and min(values) < 1):
        raise CommandError(f"{option} {text!r}: expected {n} whole numbers separated by commas")
    if option == "--roi" and min(values[3:]) < 1:
        raise CommandError(f"{option} {text!r}: width, height and depth must be positive")
    return values


def _triple(values: tuple[int, ...]) -> tuple[int, int, int]:
    return values[0], values[1], values[2]


def _voxel(text: str | None) -> tuple[float, float, float] | None:
    if text is None:
        return None
    from etchacell_loop.imaging.volume import VolumeError, parse_voxel_size_nm

    try:
        return parse_voxel_size_nm(text)
    except VolumeError as exc:
        raise CommandError(f"--voxel-size-nm: {exc}") from None


def _rule(name: str) -> TapRule:
    return "majority" if name == "majority" else "any" if name == "any" else "all"


def _print_prediction(report: VolumePrediction, min_component_voxels: int) -> None:
    grid = report.grid
    shape = " x ".join(map(str, grid.shape_zyx))
    voxel = " x ".join(f"{v:g}" for v in grid.voxel_size_nm)
    console.print(f"region {grid.region.name}: {shape} voxels of {voxel} nm (source factor {grid.factor_zyx})")
    console.print(
        f"envelope: {report.envelope_voxels} voxels in {report.n_components_kept} piece(s) "
        f"({report.voted_voxels} before removing small pieces)"
    )
    if report.envelope_voxels == 0 and report.voted_voxels > 0:
        console.print(
            f"[yellow]every piece was smaller than --min-component-voxels {min_component_voxels} (the paper's "
            "minimum for ROIs of 400 x 400 x 150 voxels); a smaller region needs a smaller minimum[/]"
        )
    worst = max(report.uncertainty, default=0.0)
    console.print(f"axes' disagreement per slice: mean {_mean(report.uncertainty):.3f}, worst {worst:.3f}")
    chunks = f"{report.n_chunks} chunks"
    if report.chunks_computed is not None and report.chunks_computed < report.n_chunks:
        chunks = f"{report.chunks_computed} of {report.n_chunks} chunks predicted by this run, the rest resumed"
    console.print(f"wrote {report.out} in {report.seconds:.1f} s ({chunks})")


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
