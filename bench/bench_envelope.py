"""End-to-end envelope quality: from a synthetic volume through a simulated crowd to TAP, scored as Table 1.

Usage:
    .venv/bin/python bench/bench_envelope.py --work /tmp/envelope [--stages all|crowd|model] [--pack OUT.tar]
        [--shape 48,1024,2048] [--cells 8] [--classifications 9] [--preset small] [--epochs N] [--steps N]
        [--workers N] [--rule all|majority|any|z|each] [--min-component-voxels N] [--json]

The whole loop, once, on the project's own components:

1. ``generate_volume``: a synthetic SBF-SEM volume with its truth and one ROI per nucleus;
2. ``prepare_subjects``: every slice of every ROI as a subject (``--crop-px`` square crops shown at
   ``--subject-px``, so the nucleus fills the subject as in the paper);
3. a local sandbox: ``etchacell subjects upload``, then simulated volunteers (the paper's crowd mix,
   three prolific ones) until every subject is retired at ``--classifications`` each, then the
   project's classification export;
4. ``aggregate_export`` with ``cria-robust``: a consensus mask per subject;
5. labelled slices (consensus masks joined with the manifest through ``#upload_key``), split by ROI
   into train / validation / test (:func:`etchacell_loop.model.data.assign_splits`), written to a
   compact index, ``labelled.json``;
6. ``train_model`` on the train and validation ROIs (``--preset``; ``--epochs`` and ``--steps``
   default to the preset's schedule, so ``--preset paper`` trains as the paper did);
7. ``predict_volume`` over each held-out test ROI, per ``--rule`` (TAP ``all`` / ``majority`` / ``any``,
   or ``z``: along z only), with the loop's post-processing for an ROI (components of at least the
   minimum, full connectivity, the largest kept);
8. Table 1 for each test ROI as :mod:`etchacell_loop.model.scoring` computes it for the registry: at
   the **source resolution** (the paper's terms: the prediction scaled back up, the 70 nm band at
   10 nm) against (a) the ROI's consensus and (b) the ground truth of its nucleus, with the
   targets (F-measure >= 0.70, AHD <= 1.7 px) marked; the same on the 50 nm model grid as a secondary
   table; and two ceilings beside them: the **consensus** against the truth (what the crowd gave the
   model to learn from) and the **target** against the truth (the truth's band made as training
   targets are, a perfect 50 nm model's prediction, scaled back up: what 50 nm voxels allow).

Every stage writes into ``--work`` and is skipped when its output is there, so a rerun with other
training or prediction options repeats only the model part. The minimum envelope component kept by
TAP is scaled from the paper's 10,000 voxels (for 2000 x 2000 x 150-slice ROIs, 400 x 400 x 150
voxels at 50 nm) by the ROI's envelope size — side length times depth — unless
``--min-component-voxels`` says otherwise (the synthetic ROIs here are about 100 x 100 x 48 voxels).

Two machines. ``--stages crowd`` runs steps 1-5 (CPU only; the sandbox and the volunteers need the
whole project), ``--stages model`` steps 6-8 (the model stack and the array libraries only: no
settings, database, web or Zooniverse libraries are imported), ``all`` (the default) both. The
model stages read only ``labelled.json``, the masks it names, ``stages.json`` and the volume; the
volume is not copied but made again from the spec recorded in ``stages.json`` and refused unless
its truth has the recorded digest. ``--pack OUT.tar`` writes everything else they read::

    DIR/stages.json         options of every stage; the volume's full spec and truth digest   travels
    DIR/labelled.json       per labelled slice: ROI, z, crop, scale, split, mask path          travels
    DIR/crowd.json          the crowd's figures, for the report                                travels
    DIR/consensus/masks/    one PNG per subject (the consensus), those named in the index     travels
    DIR/synth.zarr/         the volume (~400 MB at 160 x 1024 x 2048)                         made again
    DIR/subjects/ sandbox/ loop.db data/ export.csv consensus/...   the crowd's work             stays
    DIR/model-*/            the model, its training summary, predictions (the model stages)

So, here: ``bench_envelope.py --work DIR --stages crowd --pack DIR.tar``; there, in the checkout:
``mkdir DIR && tar -xf DIR.tar -C DIR && bench_envelope.py --work DIR --stages model`` (the volume's
and the crowd's options come from ``stages.json`` when not given; ``--workers`` sets the processes
that make the volume and training's batches).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import sys
import tarfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from etchacell_loop.imaging.omezarr import OmeZarrError, read_etchacell_attrs
from etchacell_loop.imaging.synth_volume import SynthSpec, generate_volume, truth_digest
from etchacell_loop.imaging.volume import RoiBox, open_volume
from etchacell_loop.model.data import LabelledSlice, assign_splits, read_mask
from etchacell_loop.model.evaluation import PredictionOnSource, band_on_grid, truth_band_slices, upscale_to_source
from etchacell_loop.model.metrics import Table1, Table1Accumulator, render_table1
from etchacell_loop.model.presets import ModelPreset, get_preset, with_batch_size
from etchacell_loop.model.scoring import CONSENSUS, TRUTH, RoiCase, RoiScores, score_prediction

if TYPE_CHECKING:  # the crowd stages' types; the model stages never import them (see the docstring)
    from etchacell_loop.imaging.manifest import ManifestEntry

TARGET_F_MEASURE = 0.70
TARGET_AHD_PX = 1.7
ENVELOPE_WIDTH_NM = 70.0
TARGET_VERSION = "t2"  # training targets: the 70 nm band drawn at 10 nm, area-averaged to the model grid
PAPER_MIN_COMPONENT_VOXELS = 10_000
PAPER_ROI_SIDE_VOXELS = 400  # 2000 px at 10 nm, at 50 nm
PAPER_ROI_DEPTH_VOXELS = 150
RULES = ("all", "majority", "any")
SINGLE_AXIS = "z"  # no TAP: the model along z only, as trained
STAGES = ("all", "crowd", "volume", "model")  # volume: rebuild and check the volume only

STAMPS_NAME = "stages.json"
VOLUME_NAME = "synth.zarr"
INDEX_NAME = "labelled.json"
CROWD_NAME = "crowd.json"
INDEX_FORMAT = 1
TRUTH_STAMP = "volume_truth"  # the volume's full spec and truth digest, recorded when first made
PACK_LIMIT_BYTES = 64 * 1024 * 1024  # what a GPU machine receives beside the checkout
# Options the work folder's stamps supply when the command line leaves them out: (stage, key, default).
STAMPED_OPTIONS: Mapping[str, tuple[str, str, Any]] = {
    "shape": ("volume", "shape", "48,1024,2048"),
    "cells": ("volume", "cells", 8),
    "seed": ("volume", "seed", 0),
    "crop_px": ("subjects", "crop_px", 512),
    "subject_px": ("subjects", "subject_px", 256),
    "classifications": ("crowd", "classifications", 9),
}
csv.field_size_limit(1 << 30)


@dataclass
class Timings:
    """Seconds per stage; a stage found done is recorded as ``cached``."""

    seconds: dict[str, float] = field(default_factory=dict)
    cached: list[str] = field(default_factory=list)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - started, 2)

    def skip(self, name: str) -> None:
        if name not in self.cached:  # the volume is looked for by both the crowd and the model stages
            self.cached.append(name)


def read_stamps(work: Path) -> dict[str, Any]:
    path = work / STAMPS_NAME
    stamps: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    return stamps


def write_stamp(work: Path, stage: str, value: Mapping[str, Any]) -> None:
    stamps = read_stamps(work)
    stamps[stage] = json.loads(json.dumps(value))
    (work / STAMPS_NAME).write_text(json.dumps(stamps, indent=1))


def check_stamp(work: Path, stage: str, options: Mapping[str, Any]) -> None:
    """Refuse a work folder whose ``stage`` was made with other options: its cached output would not
    be what the command line asks for."""
    stamps = read_stamps(work)
    wanted = json.loads(json.dumps(options))
    if stamps.get(stage, wanted) != wanted:
        raise SystemExit(f"{work}: its {stage} stage was made with {stamps[stage]}, not {wanted}; use another --work")
    if stage not in stamps:
        write_stamp(work, stage, wanted)


def fill_stamped_options(args: argparse.Namespace, work: Path) -> None:
    """Options left out take the work folder's stamped values, else the defaults: a folder made by
    the crowd stages elsewhere runs its model stages with ``--work`` alone."""
    stamps = read_stamps(work)
    for option, (stage, key, default) in STAMPED_OPTIONS.items():
        if getattr(args, option) is None:
            setattr(args, option, stamps.get(stage, {}).get(key, default))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- the volume ----------------------------------------------------------------------------------


def spec_to_json(spec: SynthSpec) -> dict[str, Any]:
    return cast(dict[str, Any], json.loads(json.dumps(asdict(spec))))


def spec_from_json(data: Mapping[str, Any]) -> SynthSpec:
    def floats(key: str) -> tuple[float, float, float]:
        a, b, c = (float(v) for v in data[key])
        return a, b, c

    z, y, x = (int(v) for v in data["shape"])
    cells = data["cells"]
    return SynthSpec(
        shape=(z, y, x),
        voxel_size_nm=floats("voxel_size_nm"),
        cells=None if cells is None else int(cells),
        seed=int(data["seed"]),
        mitotic=bool(data["mitotic"]),
        roi_margin_nm=floats("roi_margin_nm"),
    )


def volume_complete(path: Path) -> bool:
    """Whether ``path`` is a finished synthetic volume: its ROIs are written last."""
    try:
        attrs = read_etchacell_attrs(path) if path.exists() else None
    except OmeZarrError:
        return False
    return attrs is not None and "rois" in attrs


def default_workers() -> int:
    return max(1, (os.cpu_count() or 2) - 1)


def ensure_volume(work: Path, spec: SynthSpec, workers: int | None, timings: Timings) -> Path:
    """The volume, generated when missing. The first time, its full spec and the digest of its truth
    are recorded in the stamps; a volume made again (on another machine, from a packed folder) is
    made from the recorded spec and must have the recorded truth, else the run stops: every
    consensus mask was drawn on the first one, and a different truth would score silently wrong."""
    path = work / VOLUME_NAME
    recorded = read_stamps(work).get(TRUTH_STAMP)
    if volume_complete(path):
        timings.skip("volume")
        if recorded is None:
            write_stamp(work, TRUTH_STAMP, {"spec": spec_to_json(spec), "digest": truth_digest(path)})
        return path
    make = spec_from_json(recorded["spec"]) if recorded is not None else spec
    with timings.stage("volume"):
        report = generate_volume(path, make, overwrite=True, workers=default_workers() if workers is None else workers)
        digest = truth_digest(path)
    log(f"volume: {report.shape} with {report.cells} cells, {len(report.rois)} ROIs in {report.seconds:.1f} s")
    if recorded is None:
        write_stamp(work, TRUTH_STAMP, {"spec": spec_to_json(make), "digest": digest})
    elif digest != recorded["digest"]:
        shutil.rmtree(path)
        raise SystemExit(
            f"{path}: made again from its recorded spec, its truth is {digest}, not the recorded "
            f"{recorded['digest']}; this code makes another volume than the crowd saw (run the crowd stages again)"
        )
    return path


# --- subjects ------------------------------------------------------------------------------------


def ensure_subjects(
    work: Path, volume_path: Path, crop_px: int, subject_px: int, timings: Timings
) -> list[ManifestEntry]:
    """Every slice of every ROI as a subject; the manifest names the volume and frames relative to
    the work folder's places, so the folder reads the same wherever it is copied."""
    from etchacell_loop.imaging.manifest import read_manifest
    from etchacell_loop.imaging.prepare import prepare_subjects
    from etchacell_loop.imaging.subjects import SubjectFormat

    out = work / "subjects"
    if not (out / "manifest.jsonl").exists():
        fmt = SubjectFormat(crop_size_px=crop_px, subject_size_px=subject_px)
        with timings.stage("subjects"), open_volume(volume_path) as volume:
            report = prepare_subjects(volume, volume.rois, out, fmt, relative_root=work)
        log(f"subjects: {report.subjects_in_manifest} from {len(report.rois)} ROIs")
    else:
        timings.skip("subjects")
    return read_manifest(out)


# --- the crowd -----------------------------------------------------------------------------------


def ensure_export(
    work: Path, volume_path: Path, classifications: int, seed: int, timings: Timings
) -> tuple[Path, int, dict[str, Any]]:
    """Upload the manifest to a fresh sandbox, let the simulated crowd classify every subject until
    retired, and save the project's classification export. Returns (export, workflow id, crowd summary)."""
    export, info_path = work / "export.csv", work / CROWD_NAME
    if export.exists() and info_path.exists():
        timings.skip("crowd")
        info = json.loads(info_path.read_text())
        return export, int(info["workflow_id"]), info
    from etchacell_loop.sandbox.harness import running_sandbox

    state = work / "sandbox"
    if state.exists():
        shutil.rmtree(state)
    (work / "loop.db").unlink(missing_ok=True)
    with running_sandbox(state) as sandbox:
        seeded = sandbox.seed(retirement_count=classifications)
        workflow_id = int(seeded["segmentation_workflow_id"])
        with timings.stage("upload"):
            upload_manifest(work, sandbox.url, seeded)
        with timings.stage("volunteers"):
            info = run_volunteers(sandbox.url, workflow_id, volume_path, seed)
        with timings.stage("export"):
            export.write_bytes(download_export(sandbox.url, int(seeded["project_id"])))
    info["workflow_id"] = workflow_id
    info_path.write_text(json.dumps(info, indent=1))
    return export, workflow_id, info


def upload_manifest(work: Path, url: str, seeded: Mapping[str, int]) -> None:
    """``etchacell subjects upload`` as an operator runs it, on a fresh SQLite database."""
    from typer.testing import CliRunner

    from etchacell_loop.cli.app import app

    (work / "empty.toml").write_text("")
    env = {
        "ETCHACELL_CONFIG": str(work / "empty.toml"),
        "ETCHACELL_DATA_DIR": str(work / "data"),
        "ETCHACELL_DATABASE_URL": f"sqlite:///{work / 'loop.db'}",
        "ETCHACELL_PANOPTES__ENDPOINT": url,
        "ETCHACELL_PANOPTES__CLIENT_ID": "sandbox",
        "ETCHACELL_PANOPTES__CLIENT_SECRET": "sandbox-secret",
        "ETCHACELL_PANOPTES__PROJECT_ID": str(seeded["project_id"]),
        "ETCHACELL_PANOPTES__SEGMENTATION_WORKFLOW_ID": str(seeded["segmentation_workflow_id"]),
    }
    runner = CliRunner()
    for command in (["db", "upgrade"], ["subjects", "upload", str(work / "subjects"), "--subject-set", "bench"]):
        result = runner.invoke(app, command, env=env)
        if result.exit_code != 0:
            raise SystemExit(f"etchacell {' '.join(command)} failed ({result.exit_code}): {result.output}")
    log("upload: done")


def run_volunteers(url: str, workflow_id: int, volume_path: Path, seed: int) -> dict[str, Any]:
    """The paper's crowd (its behaviour mix and three prolific volunteers) until every subject retires."""
    from etchacell_loop.simulation.crowd import CrowdMix
    from etchacell_loop.simulation.volunteers import RunOptions, RunReport, VolunteerCrowd, volumes_by_name

    options = RunOptions(
        workflow_id=workflow_id, mix=CrowdMix(prolific_behaviours=()).with_prolific(3), seed=seed, until_retired=True
    )
    started = time.perf_counter()

    def progress(report: RunReport) -> None:
        if report.classifications % 200 == 0:
            rate = report.classifications / max(time.perf_counter() - started, 1e-9)
            log(f"volunteers: {report.classifications} classifications ({rate:.1f}/s)")

    with VolunteerCrowd(url, options, volumes_by_name([volume_path])) as crowd:
        report = crowd.run(progress)
    seconds = time.perf_counter() - started
    log(f"volunteers: {report.classifications} classifications in {seconds:.0f} s, stopped: {report.stop_reason}")
    return {
        "classifications": report.classifications,
        "volunteers": report.volunteers,
        "gini": round(report.gini, 3),
        "by_behaviour": dict(report.by_behaviour()),
        "classifications_per_s": round(report.classifications / seconds, 2),
    }


def download_export(url: str, project_id: int) -> bytes:
    """The project's classification export, through the real panoptes-client as a researcher gets it."""
    from panoptes_client import Panoptes, Project

    Panoptes.connect(endpoint=url, client_id="sandbox", client_secret="sandbox-secret")
    project = Project.find(project_id)
    project.generate_export("classifications")
    response = project.get_export("classifications", wait=True, wait_timeout=120)
    content: bytes = response.content
    return content


# --- consensus and the labelled index ------------------------------------------------------------


def ensure_consensus(export: Path, workflow_id: int, out: Path, timings: Timings) -> None:
    from etchacell_loop.aggregate.run import AggregateOptions, aggregate_export
    from etchacell_loop.cria.consensus import CriaParams

    if (out / "summary.csv").exists():
        timings.skip("aggregate")
        return
    with timings.stage("aggregate"):
        options = AggregateOptions(params=CriaParams(method="cria-robust"), workflow_id=workflow_id)
        report = aggregate_export(export, out, options)
    log(f"aggregate: {report.subjects} subjects, {report.slices} slices, {report.flagged_volunteers} flagged")


def subject_upload_keys(export: Path) -> dict[int, str]:
    """Panoptes subject id → ``#upload_key``, from the export's ``subject_data`` (subject metadata)."""
    keys: dict[int, str] = {}
    with export.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            for subject_id, data in json.loads(row["subject_data"]).items():
                if isinstance(data, dict) and "#upload_key" in data:
                    keys[int(subject_id)] = str(data["#upload_key"])
    return keys


def labelled_slices(
    entries: Sequence[ManifestEntry], keys: Mapping[int, str], masks: Path, splits: Mapping[str, str]
) -> list[LabelledSlice]:
    """One record per subject with a consensus mask, its split by ROI (``volume/roi``)."""
    by_key = {entry.upload_key: entry for entry in entries}
    records = []
    for subject_id, key in sorted(keys.items()):
        entry, mask = by_key.get(key), masks / f"{subject_id}.png"
        if entry is None or not mask.exists():
            continue
        crop = tuple(int(v) for v in entry.metadata["#crop_xywh"].split(","))
        records.append(
            LabelledSlice(
                volume_path=entry.volume.path,
                roi=entry.roi,
                z=entry.z,
                crop_xywh=(crop[0], crop[1], crop[2], crop[3]),
                scaling_factor=float(entry.metadata["Scaling factor"]),
                mask_path=str(mask),
                split=splits[roi_key(entry)],
                consensus_id=subject_id,
            )
        )
    return records


def roi_key(entry: ManifestEntry) -> str:
    return f"{entry.volume.name}/{entry.roi.name}"


@dataclass(frozen=True)
class LabelledIndex:
    """What the model stages learn from and score against: every ROI's box and split (ROIs without
    a labelled slice too: the splits are drawn over all of them) and the labelled slices."""

    volume_path: Path
    rois: Mapping[str, RoiBox]
    splits: Mapping[str, str]
    slices: tuple[LabelledSlice, ...]


def ensure_index(work: Path, entries: Sequence[ManifestEntry], export: Path, seed: int, timings: Timings) -> None:
    """``labelled.json``: the export joined with the manifest once, so the model stages need neither
    (the export alone is tens of megabytes for a realistic bench)."""
    if (work / INDEX_NAME).exists():
        timings.skip("index")
        return
    with timings.stage("index"):
        splits = assign_splits(sorted({roi_key(e) for e in entries}), seed=seed)
        slices = labelled_slices(entries, subject_upload_keys(export), work / "consensus" / "masks", splits)
        rois = {roi_key(e): e.roi for e in entries}
        write_index(work, LabelledIndex(work / VOLUME_NAME, rois, splits, tuple(slices)))
    log(f"index: {len(slices)} labelled slices of {len(rois)} ROIs")


def relative_to_work(work: Path, path: str | Path) -> str:
    """``path`` relative to the work folder; an index pointing outside it could not travel."""
    resolved, root = Path(path).resolve(), work.resolve()
    if not resolved.is_relative_to(root):
        raise SystemExit(f"{path}: outside the work folder {work}; the labelled index must name files inside it")
    return resolved.relative_to(root).as_posix()


def write_index(work: Path, index: LabelledIndex) -> None:
    """Write the index with paths relative to the work folder (a temporary file renamed into place)."""
    for record in index.slices:
        if Path(record.volume_path).resolve() != index.volume_path.resolve():
            raise SystemExit(f"{record.volume_path}: a labelled slice of another volume than {index.volume_path}")
    data = {
        "format": INDEX_FORMAT,
        "volume": relative_to_work(work, index.volume_path),
        "rois": {key: roi.as_dict() for key, roi in sorted(index.rois.items())},
        "splits": dict(sorted(index.splits.items())),
        "slices": [
            {
                "roi": record.roi_key,
                "z": record.z,
                "crop_xywh": list(record.crop_xywh),
                "scaling_factor": record.scaling_factor,
                "split": record.split,
                "mask": relative_to_work(work, record.mask_path),
                "consensus_id": record.consensus_id,
            }
            for record in index.slices
        ],
    }
    temporary = work / f".{INDEX_NAME}.tmp"
    temporary.write_text(json.dumps(data, indent=0))
    temporary.replace(work / INDEX_NAME)


def roi_from_json(data: Mapping[str, Any]) -> RoiBox:
    label = data.get("nucleus_label")
    return RoiBox(
        str(data["name"]),
        int(data["x"]),
        int(data["y"]),
        int(data["z"]),
        int(data["width"]),
        int(data["height"]),
        int(data["depth"]),
        None if label is None else int(label),
    )


def read_index(work: Path) -> LabelledIndex:
    """The labelled index with its paths made absolute in this work folder, wherever it was written."""
    path = work / INDEX_NAME
    if not path.exists():
        raise SystemExit(f"{path}: no labelled index; run the crowd stages first (--stages crowd), or unpack one here")
    data = json.loads(path.read_text())
    if data.get("format") != INDEX_FORMAT:
        raise SystemExit(f"{path}: index format {data.get('format')!r}, this bench reads {INDEX_FORMAT}")
    volume_path = work / data["volume"]
    rois = {str(key): roi_from_json(box) for key, box in data["rois"].items()}
    slices = tuple(
        LabelledSlice(
            volume_path=str(volume_path),
            roi=rois[item["roi"]],
            z=int(item["z"]),
            crop_xywh=cast(tuple[int, int, int, int], tuple(int(v) for v in item["crop_xywh"])),
            scaling_factor=float(item["scaling_factor"]),
            mask_path=str(work / item["mask"]),
            split=str(item["split"]),
            consensus_id=None if item["consensus_id"] is None else int(item["consensus_id"]),
        )
        for item in data["slices"]
    )
    return LabelledIndex(volume_path, rois, {str(k): str(v) for k, v in data["splits"].items()}, slices)


def pack_members(work: Path, index: LabelledIndex) -> list[str]:
    """What the model stages read besides the volume, relative to the work folder."""
    masks = sorted({relative_to_work(work, record.mask_path) for record in index.slices})
    extras = [name for name in (CROWD_NAME,) if (work / name).exists()]
    return [STAMPS_NAME, INDEX_NAME, *extras, *masks]


def write_pack(work: Path, out: Path) -> int:
    """``out``: a tar of :func:`pack_members` (paths relative to the work folder, to unpack into a new
    one); refused, and not left behind, when it would not fit what a GPU machine receives."""
    members = pack_members(work, read_index(work))
    temporary = out.with_name(f".{out.name}.tmp")
    with tarfile.open(temporary, "w") as tar:
        for name in members:
            tar.add(work / name, arcname=name, recursive=False)
    size = temporary.stat().st_size
    if size > PACK_LIMIT_BYTES:
        temporary.unlink()
        raise SystemExit(
            f"{out}: {size / 2**20:.1f} MiB is over the {PACK_LIMIT_BYTES / 2**20:.0f} MiB a GPU machine receives"
        )
    temporary.replace(out)
    log(f"pack: {out} ({len(members)} files, {size / 2**20:.2f} MiB)")
    return size


# --- the model -----------------------------------------------------------------------------------


def import_model_stack() -> None:
    """Import what the model stages use before any work, so a machine lacking part of it stops in
    seconds rather than after making the volume again."""
    from etchacell_loop.model import keras_io, predict, tap, train  # noqa: F401


@dataclass(frozen=True)
class Training:
    """How the model stage trains: preset (batch-scaled), (epochs, steps), seed, input workers, precision."""

    preset: ModelPreset
    schedule: tuple[int, int]
    seed: int
    workers: int | None
    precision: str


def ensure_model(training: Training, slices: Sequence[LabelledSlice], out: Path, timings: Timings) -> dict[str, Any]:
    summary_path = out / "train.json"
    if summary_path.exists():
        timings.skip("train")
        summary: dict[str, Any] = json.loads(summary_path.read_text())
        return summary
    from etchacell_loop.model.train import train_model

    def on_epoch(figures: Mapping[str, float]) -> None:
        log(
            f"train: epoch {figures['epoch']:.0f}/{figures['epochs']:.0f} loss {figures['loss']:.3f} "
            f"val_loss {figures['val_loss']:.3f}"
        )

    usable = [s for s in slices if s.split in ("train", "validation")]
    epochs, steps = training.schedule
    with timings.stage("train"):
        result = train_model(
            training.preset,
            usable,
            out,
            seed=training.seed,
            epochs=epochs,
            steps_per_epoch=steps,
            on_epoch=on_epoch,
            workers=training.workers,
            precision="mixed_bfloat16" if training.precision == "mixed_bfloat16" else "float32",
        )
    summary = {
        "artifact": relative_to_work(out.parent, result.artifact_path),
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "val_metrics": result.val_metrics,
        "train_slices": sum(s.split == "train" for s in usable),
        "validation_slices": sum(s.split == "validation" for s in usable),
        "seconds": timings.seconds["train"],
    }
    summary_path.write_text(json.dumps(summary, indent=1))
    return summary


def scaled_min_component_voxels(shape_zyx: Sequence[int]) -> int:
    """The paper's 10,000-voxel minimum scaled by the envelope's size: an envelope grows with the ROI's
    side (its outline) times its depth, so a component that is as small a share of the envelope as
    10,000 voxels were of a 400 x 400 x 150 ROI's is removed."""
    side = math.sqrt(shape_zyx[1] * shape_zyx[2])
    scale = side / PAPER_ROI_SIDE_VOXELS * shape_zyx[0] / PAPER_ROI_DEPTH_VOXELS
    return max(1, round(PAPER_MIN_COMPONENT_VOXELS * scale))


def ensure_prediction(
    artifact: Path, volume_path: Path, roi: RoiBox, out: Path, rule: str, min_voxels: int | None, timings: Timings
) -> Path:
    if (out / ".zattrs").exists():
        timings.skip(f"predict {roi.name} {rule}")
        return out
    from etchacell_loop.model.keras_io import load_predict_fn
    from etchacell_loop.model.predict import predict_volume, prediction_grid
    from etchacell_loop.model.tap import TRI_AXES, TapParams, TapRule

    predict_fn, preset = load_predict_fn(artifact)
    with timings.stage("predict"), open_volume(volume_path) as volume:
        grid = prediction_grid(volume, preset.voxel_size_nm, roi)
        minimum = min_voxels if min_voxels is not None else scaled_min_component_voxels(grid.shape_zyx)
        tap_rule: TapRule = "all" if rule == SINGLE_AXIS else cast(TapRule, rule)
        axes = (0,) if rule == SINGLE_AXIS else TRI_AXES
        params = TapParams(
            patch_zyx=preset.patch_zyx, axes=axes, rule=tap_rule, min_component_voxels=minimum, keep_largest=True
        )
        result = predict_volume(volume, predict_fn, preset, out, params=params, roi=roi, overwrite=True)
    log(
        f"predict: {roi.name} rule {rule}, grid {grid.shape_zyx}, min component {minimum} voxels, "
        f"{result.envelope_voxels} envelope voxels in {result.n_components_kept} components, {result.seconds:.1f} s"
    )
    return out


# --- evaluation ----------------------------------------------------------------------------------


def roi_case(index: LabelledIndex, key: str) -> RoiCase:
    """The held-out ROI as the worker scores it: its consensus records, the volume's truth."""
    records = tuple(s for s in index.slices if s.roi_key == key)
    return RoiCase("test", index.volume_path, None, index.rois[key], records)


def evaluate_prediction(pred_path: Path, case: RoiCase) -> RoiScores:
    """Table 1 of one prediction against the ROI's consensus and truth, at the source resolution and
    on the model grid, with the consensus' own figures against the truth."""
    return score_prediction(case, pred_path, envelope_width_nm=ENVELOPE_WIDTH_NM)


def target_ceiling(pred_path: Path, case: RoiCase) -> Table1:
    """The truth's band made as a training target (area means at the model voxel), scaled back up and
    scored against the truth at the source resolution: the best any model on this grid can reach."""
    prediction = PredictionOnSource.open(pred_path)
    try:
        place = prediction.placement
        factor_yx = (place.factor_zyx[1], place.factor_zyx[2])
        shape_yx = (prediction.label.shape_zyx[1], prediction.label.shape_zyx[2])
        region_yx = (place.region_zyx[1], place.region_zyx[2])
        accumulator = Table1Accumulator(prediction.pixel_size_nm)
        truth = truth_band_slices(case.volume_path, place.region, nucleus_label=case.roi.nucleus_label)
        for z, band in truth:
            best = upscale_to_source(band_on_grid(band, factor_yx, shape_yx), factor_yx, region_yx)
            accumulator.add(z, best, band)
        return accumulator.table()
    finally:
        prediction.close()


def verdict(table: Table1) -> str:
    f_ok, ahd_ok = table.f_measure >= TARGET_F_MEASURE, table.ahd_px <= TARGET_AHD_PX
    return (
        f"F-measure {table.f_measure:.3f} {'met' if f_ok else 'MISSED'} (>= {TARGET_F_MEASURE}), "
        f"AHD {table.ahd_px:.2f} px {'met' if ahd_ok else 'MISSED'} (<= {TARGET_AHD_PX})"
    )


# --- the run -------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="work folder; finished stages are reused")
    parser.add_argument(
        "--stages", default="all", choices=STAGES, help="crowd: volume to labelled index; model: train to Table 1"
    )
    parser.add_argument("--pack", type=Path, default=None, help="write a tar of what the model stages need")
    stamped = "default: the work folder's, else %s"
    parser.add_argument("--shape", default=None, help=f"synthetic volume Z,Y,X voxels ({stamped % '48,1024,2048'})")
    parser.add_argument("--cells", type=int, default=None, help=f"cells (ROIs), split 60/20/20 ({stamped % 8})")
    parser.add_argument(
        "--seed", type=int, default=None, help=f"seed of volume, crowd, splits, training ({stamped % 0})"
    )
    parser.add_argument("--crop-px", type=int, default=None, help=f"the square a subject shows ({stamped % 512})")
    parser.add_argument("--subject-px", type=int, default=None, help=f"imaging.subject_size_px ({stamped % 256})")
    parser.add_argument("--classifications", type=int, default=None, help=f"per subject, retirement ({stamped % 9})")
    parser.add_argument("--preset", default="small", help="model preset (small, small-3d, paper, ...)")
    parser.add_argument("--epochs", type=int, default=None, help="default: the preset's")
    parser.add_argument("--steps", type=int, default=None, help="steps per epoch; default: the preset's")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes making the volume and training's batches (default: cores - 1)",
    )
    parser.add_argument(
        "--rule", default="all", choices=[*RULES, SINGLE_AXIS, "each"], help="TAP rule; z: no TAP; each: all four"
    )
    parser.add_argument("--min-component-voxels", type=int, default=None, help="default: scaled from the paper's")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="patches per step; the learning rate scales by its square root"
    )
    parser.add_argument("--precision", default="float32", choices=["float32", "mixed_bfloat16"])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    return parser.parse_args(argv)


def triple(text: str) -> tuple[int, int, int]:
    values = [int(v) for v in text.split(",")]
    if len(values) != 3 or min(values) < 1:
        raise SystemExit(f"--shape: {text!r} is not Z,Y,X")
    return values[0], values[1], values[2]


def check_volume_stamp(args: argparse.Namespace, work: Path) -> SynthSpec:
    check_stamp(work, "volume", {"shape": args.shape, "cells": args.cells, "seed": args.seed})
    return SynthSpec(shape=triple(args.shape), cells=args.cells, seed=args.seed)


def run_crowd_stages(args: argparse.Namespace, work: Path, timings: Timings) -> None:
    """Volume, subjects, crowd, consensus and the labelled index: everything the model stages read."""
    spec = check_volume_stamp(args, work)
    check_stamp(work, "subjects", {"crop_px": args.crop_px, "subject_px": args.subject_px})
    check_stamp(work, "crowd", {"classifications": args.classifications, "seed": args.seed})
    volume_path = ensure_volume(work, spec, args.workers, timings)
    entries = ensure_subjects(work, volume_path, args.crop_px, args.subject_px, timings)
    export, workflow_id, _ = ensure_export(work, volume_path, args.classifications, args.seed, timings)
    ensure_consensus(export, workflow_id, work / "consensus", timings)
    ensure_index(work, entries, export, args.seed, timings)


def chosen_preset(args: argparse.Namespace) -> ModelPreset:
    """The preset, at ``--batch-size`` when given (its rate and steps scaled to keep the dynamics)."""
    preset = get_preset(args.preset)
    return with_batch_size(preset, args.batch_size) if args.batch_size else preset


def schedule(args: argparse.Namespace) -> tuple[int, int]:
    """(epochs, steps per epoch): the command line's, else the (batch-scaled) preset's."""
    preset = chosen_preset(args)
    return args.epochs or preset.epochs, args.steps or preset.steps_per_epoch


def run_model_stages(args: argparse.Namespace, work: Path, timings: Timings) -> None:
    """Train, predict each test ROI and score it, from the index, its masks and the volume alone."""
    import_model_stack()
    spec = check_volume_stamp(args, work)
    index = read_index(work)
    volume_path = ensure_volume(work, spec, args.workers, timings)
    epochs, steps = schedule(args)
    preset = chosen_preset(args)
    tag = f"b{preset.batch_size}-{'bf16' if args.precision == 'mixed_bfloat16' else 'f32'}"
    model_dir = work / f"model-{args.preset}-e{epochs}-s{steps}-{tag}-seed{args.seed}-{TARGET_VERSION}"
    training = Training(preset, (epochs, steps), args.seed, args.workers, args.precision)
    trained = ensure_model(training, index.slices, model_dir, timings)
    rules = (*RULES, SINGLE_AXIS) if args.rule == "each" else (args.rule,)
    min_tag = "auto" if args.min_component_voxels is None else str(args.min_component_voxels)
    tables: dict[str, Table1] = {}
    grid_tables: dict[str, Table1] = {}
    for key in sorted(k for k, split in index.splits.items() if split == "test"):
        roi, case = index.rois[key], roi_case(index, key)
        for rule in rules:
            pred = model_dir / f"pred-{roi.name}-{rule}-min{min_tag}.zarr"
            artifact = work / trained["artifact"]
            ensure_prediction(artifact, volume_path, roi, pred, rule, args.min_component_voxels, timings)
            with timings.stage("evaluate"):
                scores = evaluate_prediction(pred, case)
                name = f"{key} TAP {rule}" if rule != SINGLE_AXIS else f"{key} z only"
                for reference, label in ((CONSENSUS, "consensus"), (TRUTH, "ground truth")):
                    tables[f"{name}: prediction vs {label}"] = scores.source[reference].table()
                    grid_tables[f"{name}: prediction vs {label}"] = scores.grid[reference].table()
                if scores.consensus_vs_truth is not None:
                    tables.setdefault(f"{key}: consensus vs ground truth (ceiling)", scores.consensus_vs_truth.table())
                if f"{key}: 50 nm target vs ground truth (ceiling)" not in tables:
                    tables[f"{key}: 50 nm target vs ground truth (ceiling)"] = target_ceiling(pred, case)
    report(args, index, crowd_summary(work), trained, tables, grid_tables, timings)


def crowd_summary(work: Path) -> dict[str, Any]:
    path = work / CROWD_NAME
    summary: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    work: Path = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    fill_stamped_options(args, work)
    timings = Timings()
    if args.stages in ("all", "crowd"):
        run_crowd_stages(args, work, timings)
    if args.pack is not None:
        write_pack(work, args.pack.resolve())
    if args.stages == "volume":
        path = ensure_volume(work, check_volume_stamp(args, work), args.workers, timings)
        log(f"volume: {path} checked against its truth digest")
        return
    if args.stages in ("all", "model"):
        run_model_stages(args, work, timings)
    else:
        report_crowd(args, read_index(work), crowd_summary(work), timings)


def report_crowd(args: argparse.Namespace, index: LabelledIndex, crowd: Mapping[str, Any], timings: Timings) -> None:
    """What the crowd stages left for the model stages."""
    empty = sum(not read_mask(Path(s.mask_path)).any() for s in index.slices)
    if args.json:
        print(
            json.dumps(
                {
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "splits": dict(index.splits),
                    "labelled_slices": len(index.slices),
                    "empty_consensus_slices": empty,
                    "crowd": dict(crowd),
                    "seconds": timings.seconds,
                    "cached": timings.cached,
                }
            )
        )
        return
    print_split_and_crowd(index, empty, crowd)
    print_timings(timings)


def print_split_and_crowd(index: LabelledIndex, empty: int, crowd: Mapping[str, Any]) -> None:
    splits = index.splits
    by_split = {split: sorted(k for k, v in splits.items() if v == split) for split in ("train", "validation", "test")}
    print(f"ROIs: {json.dumps(by_split)}; {len(index.slices)} labelled slices ({empty} with an empty consensus)")
    per_subject = crowd.get("classifications", 0) / max(len(index.slices), 1)
    print(
        f"crowd: {crowd.get('classifications')} classifications ({per_subject:.1f} per subject) by "
        f"{crowd.get('volunteers')} volunteers ({crowd.get('classifications_per_s')}/s)"
    )


def print_timings(timings: Timings) -> None:
    stages = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.seconds.items())
    print(f"stage timings: {stages or 'none'}; reused: {', '.join(timings.cached) or 'nothing'}")


def report(
    args: argparse.Namespace,
    index: LabelledIndex,
    crowd: Mapping[str, Any],
    trained: Mapping[str, Any],
    tables: Mapping[str, Table1],
    grid_tables: Mapping[str, Table1],
    timings: Timings,
) -> None:
    empty = sum(not read_mask(Path(s.mask_path)).any() for s in index.slices)
    predictions = {name: t for name, t in tables.items() if ": prediction vs" in name}
    targets = {
        name: {"f_measure_met": t.f_measure >= TARGET_F_MEASURE, "ahd_met": t.ahd_px <= TARGET_AHD_PX}
        for name, t in predictions.items()
    }
    if args.json:
        print(
            json.dumps(
                {
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "splits": dict(index.splits),
                    "labelled_slices": len(index.slices),
                    "empty_consensus_slices": empty,
                    "crowd": dict(crowd),
                    "training": dict(trained),
                    "tables": {name: t.as_dict() for name, t in tables.items()},
                    "model_grid_tables": {name: t.as_dict() for name, t in grid_tables.items()},
                    "targets": targets,
                    "seconds": timings.seconds,
                    "cached": timings.cached,
                }
            )
        )
        return
    print_split_and_crowd(index, empty, crowd)
    val = trained["val_metrics"]
    print(
        f"training ({args.preset}, {trained['epochs_run']} epochs x {schedule(args)[1]} steps, "
        f"best {trained['best_epoch']}): {trained['train_slices']} train / {trained['validation_slices']} "
        f"validation slices; validation F {val.get('f_measure', float('nan')):.3f}, "
        f"AHD {val.get('ahd_px', float('nan')):.2f} px"
    )
    print("\nTable 1 at the source resolution (10 nm; the paper's terms)")
    print(render_table1(tables))
    print("\non the 50 nm model grid (secondary)")
    print(render_table1(grid_tables))
    print()
    for name, table in predictions.items():
        print(f"{name}: {verdict(table)}")
    print_timings(timings)


if __name__ == "__main__":
    main()
