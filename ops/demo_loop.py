"""The closed loop, live: the daemon, a worker and two simulated crowds run together until two rounds
are done (or the time limit), then a report.

Run by ``ops/demo.sh`` after the sandbox, the volume and the subjects are ready; everything it needs
comes from the environment the demo exported (``ETCHACELL_*``, ``ETCHACELL_BIN``, the demo's paths):

    python ops/demo_loop.py --volume DATA/hela.zarr --sandbox-url URL --minutes 12

A *round* is: volunteers' consensus → retirement → an automatic training run → the promoted model
predicts the held-back slices → the most uncertain go to the correction workflow as editable marks →
volunteers correct them → the corrected consensus is measured against the prediction and becomes
training data for the next round's model. The demo ends once two model versions have had their
predictions corrected.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from etchacell_loop.config import CorrectionSettings, TrainingSettings, load_settings
from etchacell_loop.db.engine import make_engine
from etchacell_loop.db.models import (
    Classification,
    ConsensusKind,
    ConsensusResult,
    ModelMetric,
    ModelVersion,
    PredictionBatch,
    RetirementState,
    SlicePrediction,
    Subject,
    SubjectKind,
    TrainingRun,
    TrainingTrigger,
    Workflow,
)
from etchacell_loop.db.queries import get_query, run_query
from etchacell_loop.loop.machine_marks import is_machine_mark_id
from etchacell_loop.loop.monitoring import GuardState, MonitoringAgreement, guard_states, monitoring_agreement
from etchacell_loop.loop.runs import active_run, queue_training_run
from etchacell_loop.model import registry

POLL_S = 5.0
FIXED_RETIREMENT = 30  # the paper's classifications per subject
# A subject is not classified again within this many seconds (a little over the demo's 5 s job interval):
# on a live project a subject's classifications arrive minutes apart and the daemon retires it as soon
# as its consensus is stable; a simulated crowd classifying a few new subjects as fast as the server
# answers gave the demo's monitoring slices 35 classifications each before the daemon's next check.
SUBJECT_GAP_S = 6.0


@dataclass
class Snapshot:
    """The loop's state as the watcher prints it."""

    classifications: Counter[str]
    retired: Counter[str]
    versions: list[tuple[str, bool]]
    runs: Counter[str]
    batches: Counter[str]
    correction_subjects: int
    corrected_slices: int
    measured_versions: set[str]

    def line(self) -> str:
        versions = ", ".join(f"{name}{'*' if promoted else ''}" for name, promoted in self.versions) or "none"
        return (
            f"classifications {dict(self.classifications)} · retired {dict(self.retired)} · "
            f"training runs {dict(self.runs)} · models {versions} · prediction batches {dict(self.batches)} · "
            f"correction subjects {self.correction_subjects} · corrected slices {self.corrected_slices}"
        )


def snapshot(engine: Engine) -> Snapshot:
    with Session(engine) as session:
        roles = {w.id: w.role.value for w in session.exec(select(Workflow)).all()}
        per_workflow = session.exec(
            select(Classification.workflow_id, func.count(col(Classification.id))).group_by(
                col(Classification.workflow_id)
            )
        ).all()
        retired = session.exec(
            select(Subject.kind, func.count(col(Subject.id)))
            .where(col(Subject.retirement_state) != RetirementState.ACTIVE)
            .group_by(col(Subject.kind))
        ).all()
        versions = [(v.version, v.promoted) for v in session.exec(select(ModelVersion).order_by(col(ModelVersion.id)))]
        runs = Counter(r.status.value for r in session.exec(select(TrainingRun)).all())
        batches = Counter(b.status.value for b in session.exec(select(PredictionBatch)).all())
        corrections = session.exec(
            select(func.count(col(Subject.id))).where(Subject.kind == SubjectKind.PREDICTION)
        ).one()
        corrected = session.exec(
            select(func.count(col(ConsensusResult.id))).where(
                ConsensusResult.kind == ConsensusKind.CORRECTED, col(ConsensusResult.is_current).is_(True)
            )
        ).one()
        measured = session.exec(
            select(ModelVersion.version)
            .join(PredictionBatch, col(PredictionBatch.model_version_id) == col(ModelVersion.id))
            .join(SlicePrediction, col(SlicePrediction.batch_id) == col(PredictionBatch.id))
            .where(col(SlicePrediction.correction_dice).is_not(None))
            .distinct()
        ).all()
    return Snapshot(
        Counter({roles.get(w, str(w)): int(n) for w, n in per_workflow}),
        Counter({str(SubjectKind(kind)): int(n) for kind, n in retired}),
        versions,
        runs,
        batches,
        int(corrections),
        int(corrected),
        set(measured),
    )


def promote_if_stalled(engine: Engine, published: set[str]) -> str | None:
    """A newer version that did not beat the promoted one on validation is promoted by hand, once the
    promoted one's predictions have been sent: an operator's decision the demo makes to show a second
    round (and says so)."""
    with Session(engine) as session:
        current = registry.promoted_version(session)
        newest = session.exec(select(ModelVersion).order_by(col(ModelVersion.id).desc())).first()
        if newest is None or current is None or newest.id == current.id or current.version not in published:
            return None
        registry.promote_version(session, newest, by="demo", reason="promoted by hand to run a second round")
        session.commit()
        return f"{newest.version} did not beat {current.version} on validation; promoted by hand for round 2"


def retrain_when_corrected(engine: Engine, training: TrainingSettings) -> str | None:
    """Once every slice the promoted version sent has been corrected and its correction subject
    decided for retirement (training takes settled consensus only), and nothing newer is training,
    queue a manual run, as an operator would: the corrections are in, the next model can learn from
    them (the automatic trigger may fire first; then this does nothing)."""
    with Session(engine) as session:
        current = registry.promoted_version(session)
        if current is None or active_run(session) is not None:
            return None
        newer = session.exec(select(ModelVersion).where(col(ModelVersion.id) > current.id)).first()
        sent = session.exec(
            select(SlicePrediction)
            .join(PredictionBatch, col(SlicePrediction.batch_id) == col(PredictionBatch.id))
            .where(PredictionBatch.model_version_id == current.id, col(SlicePrediction.subject_id).is_not(None))
        ).all()
        if newer is not None or not sent or any(p.correction_dice is None for p in sent):
            return None
        subjects = session.exec(select(Subject).where(col(Subject.id).in_([p.subject_id for p in sent]))).all()
        if any(subject.retirement_state is RetirementState.ACTIVE for subject in subjects):
            return None
        reason = f"the corrections of {current.version}'s predictions are in"
        run = queue_training_run(
            session, TrainingTrigger.MANUAL, "demo", reason, training.preset, config=training.run_config()
        )
        session.commit()
        return f"run {run.id} queued by hand: {reason}"


def published_versions(engine: Engine) -> set[str]:
    with Session(engine) as session:
        rows = session.exec(
            select(ModelVersion.version)
            .join(PredictionBatch, col(PredictionBatch.model_version_id) == col(ModelVersion.id))
            .join(Subject, col(Subject.prediction_batch_id) == col(PredictionBatch.id))
            .distinct()
        ).all()
    return set(rows)


def start(name: str, command: list[str], logs: Path) -> subprocess.Popen[bytes]:
    handle = (logs / f"{name}.log").open("wb")
    print(f"  started {name}: {' '.join(command[1:])}  (log: {logs / (name + '.log')})", flush=True)
    return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=dict(os.environ))


def stop(processes: dict[str, subprocess.Popen[bytes]]) -> None:
    """SIGTERM to every process still running, then wait for each (killed after 90 s)."""
    asked = {name for name, process in processes.items() if process.poll() is None}
    for name in asked:
        processes[name].send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 90
    for name, process in processes.items():
        try:
            code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
            print(f"  {name} {stopped(code, name in asked)}")
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            print(f"  {name} did not stop in time: killed")


def stopped(code: int, asked: bool) -> str:
    """How a process ended, in words: a stop the demo asked for (SIGTERM: exit 0, or the signal
    itself for a command that does not catch it) is as planned; anything else shows its exit."""
    if asked and code in (0, -signal.SIGTERM, 128 + signal.SIGTERM):
        return "stopped as planned"
    return f"ended by itself (exit {code})" if not asked else f"stopped (exit {code})"


def watch(
    engine: Engine,
    processes: dict[str, subprocess.Popen[bytes]],
    deadline: float,
    rounds: int,
    training: TrainingSettings,
) -> str | None:
    """Follow the loop until ``rounds`` model versions have had their predictions corrected: None
    then, else what did not complete (the time limit, or a process that ended)."""
    last = ""
    while time.monotonic() < deadline:
        for name, process in processes.items():
            if process.poll() is not None:
                print(f"  {name} ended early (exit {process.returncode}); see its log")
                return f"the {name} ended early (exit {process.returncode}; see its log)"
        state = snapshot(engine)
        line = state.line()
        if line != last:
            print(f"  [{time.strftime('%H:%M:%S')}] {line}", flush=True)
            last = line
        for note in (promote_if_stalled(engine, published_versions(engine)), retrain_when_corrected(engine, training)):
            if note:
                print(f"  {note}", flush=True)
        if len(state.measured_versions) >= rounds:
            print(f"  {rounds} rounds done: corrections measured for {', '.join(sorted(state.measured_versions))}")
            return None
        time.sleep(POLL_S)
    print("  stopped at the time limit")
    done = len(snapshot(engine).measured_versions)
    return f"{done} of {rounds} rounds had their corrections measured within the time limit"


# --- the report -----------------------------------------------------------------------------------------


def report(engine: Engine, seconds: float, correction: CorrectionSettings) -> None:
    effort = run_query(engine, get_query("volunteer_effort")).as_dicts()
    with Session(engine) as session:
        print_crowd(session)
        versions = list(session.exec(select(ModelVersion).order_by(col(ModelVersion.id))).all())
        print_models(session, versions)
        print_corrections(session, versions, effort, correction)
    print_effort(effort)
    print(f"\nloop wall time: {seconds / 60:.1f} min")


def print_crowd(session: Session) -> None:
    subjects = session.exec(select(Subject)).all()
    by_subject = Counter(
        session.exec(select(Classification.subject_id).where(col(Classification.subject_id).is_not(None))).all()
    )
    retired = [s for s in subjects if s.retirement_state is RetirementState.RETIRED]
    print("\nsubjects and classifications")
    for kind in SubjectKind:
        of_kind = [s for s in subjects if s.kind is kind]
        done = [s for s in retired if s.kind is kind]
        seen = [s for s in of_kind if by_subject[s.id]]
        per_retired = statistics.fmean(by_subject[s.id] for s in done) if done else float("nan")
        print(
            f"  {kind.value:<10} {len(of_kind):>4} subjects ({len(of_kind) - len(seen)} never shown: held back or "
            f"not yet served), {sum(by_subject[s.id] for s in of_kind):>5} classifications, {len(done):>4} retired, "
            f"{per_retired:.1f} classifications per retired subject (fixed rule: {FIXED_RETIREMENT})"
        )


def print_models(session: Session, versions: list[ModelVersion]) -> None:
    print(
        "\nmodel versions (whole ROIs predicted as deployed, Table 1 at the source resolution; "
        "validation against consensus, test against consensus and ground truth)"
    )
    kinds = dict(session.exec(select(ConsensusResult.id, ConsensusResult.kind)).all())
    for version in versions:
        ids = [i for split in version.training_data.get("consensus_ids", {}).values() for i in split]
        corrected = sum(1 for i in ids if kinds.get(i) is ConsensusKind.CORRECTED)
        metrics = {
            (m.split.value, m.reference.value, m.name): m.value
            for m in session.exec(select(ModelMetric).where(ModelMetric.model_version_id == version.id)).all()
        }
        print(
            f"  {version.version}{' (promoted)' if version.promoted else ''}: trained on {len(ids)} consensus slices "
            f"({corrected} corrected by volunteers)\n"
            f"    validation vs consensus: {_table1(metrics, 'validation', 'consensus')}\n"
            f"    test vs consensus:       {_table1(metrics, 'test', 'consensus')}\n"
            f"    test vs truth:           {_table1(metrics, 'test', 'truth')}; "
            f"the consensus itself: F {_fig(metrics.get(('test', 'truth', 'consensus_f_measure')))}"
        )


def _table1(metrics: dict[tuple[str, str, str], float], split: str, reference: str) -> str:
    def get(name: str) -> float | None:
        return metrics.get((split, reference, name))

    return (
        f"F {_fig(get('f_measure'))} (recall {_fig(get('recall'))}, precision {_fig(get('precision'))}), "
        f"AHD {_fig(get('ahd_px'))} px = {_fig(get('ahd_nm'))} nm, area F {_fig(get('area_f_measure'))}; "
        f"on the model grid F {_fig(get('grid_f_measure'))}"
    )


def print_corrections(
    session: Session, versions: list[ModelVersion], effort: list[dict[str, Any]], correction: CorrectionSettings
) -> None:
    """Per version: its correction quality beside the volunteer time its round saved, and what the
    monitoring guard made of it."""
    print("\ncorrections (the model's predictions sent back to volunteers)")
    saved = {row["model_version"]: row["saved_vs_tracing"] for row in effort if row["task"] == "correction"}
    agreement, states = monitoring_agreement(session), guard_states(session)
    for version in versions:
        rows = session.exec(
            select(SlicePrediction)
            .join(PredictionBatch, col(SlicePrediction.batch_id) == col(PredictionBatch.id))
            .where(PredictionBatch.model_version_id == version.id, col(SlicePrediction.subject_id).is_not(None))
        ).all()
        if not rows:
            continue
        dice = [r.correction_dice for r in rows if r.correction_dice is not None]
        subject_ids = [r.subject_id for r in rows]
        kept, marks = machine_marks_kept(session, subject_ids)
        print(
            f"  {version.version}: {len(rows)} slices sent ({_counts(r.selection.value for r in rows)}), "
            f"{len(dice)} corrected and folded back, median Dice prediction vs corrected consensus "
            f"{_fig(statistics.median(dice) if dice else None)}; "
            f"volunteers kept {kept} of {marks} machine marks as drawn; "
            f"volunteer time saved against tracing {_share(saved.get(version.version))} per settled slice\n"
            f"    monitoring: {sum(1 for r in rows if r.monitoring_subject_id is not None)} slices also traced "
            f"from scratch; {guard_line(agreement.get(version.id or 0), states.get(version.id or 0), correction)}"
        )


def guard_line(agreement: MonitoringAgreement | None, state: GuardState | None, correction: CorrectionSettings) -> str:
    """The monitoring guard on one version, in words: what it measured, and whether it judged."""
    slices = agreement.slices if agreement is not None else 0
    median = agreement.median if agreement is not None else None
    measured = f"{slices} measured, median Dice corrected vs traced consensus {_fig(median)}"
    if state is not None and state is not GuardState.USED:
        return f"{measured}; corrections {state.value}"
    if slices < correction.min_monitoring_slices:
        return f"{measured}; not judged yet (the guard needs {correction.min_monitoring_slices})"
    verdict = "below" if median is not None and median < correction.min_monitoring_dice else "at or above"
    return f"{measured}; judged: {verdict} {correction.min_monitoring_dice:g}, corrections used"


def print_effort(rounds: list[dict[str, Any]]) -> None:
    """Volunteer time per settled slice in each round and what correcting saved against tracing, beside
    the quality reached: the named query ``volunteer_effort``, as ``etchacell status`` shows it."""
    print(
        "\nvolunteer effort per settled slice (each classification's finished_at - started_at, as Zooniverse "
        "records it; untimed ones counted at their task's mean in the round; a round's monitoring slices traced "
        "from scratch are charged to it)"
    )
    if not rounds:
        print("  no settled slices yet")
    for row in rounds:
        print(f"  {effort_line(row)}")
    if any((row.get("saved_vs_tracing") or 0) < 0 for row in rounds):
        print(
            "  (a negative saving here is the demo's: its model trains for seconds, so correcting it is tracing, and"
            " a few of its slices are monitoring slices traced from scratch as well; docs/corrections.md measures"
            " the saving at a model that is right on most slices)"
        )


def effort_line(row: dict[str, Any]) -> str:
    """One round: its effort, the time it saved against tracing, and its quality."""
    what = "tracing from scratch" if row["task"] == "tracing" else f"correcting {row['model_version'] or '?'}"
    untimed = f", {row['untimed']} untimed ({row['untimed_why']})" if row["untimed"] else ""
    monitoring = row.get("monitoring_classifications") or 0
    traced = f" (monitoring slices traced from scratch included: {monitoring} classifications)" if monitoring else ""
    line = (
        f"round {row['round'] if row['round'] is not None else '?'}, {what}: {row['settled_slices']} settled slices, "
        f"{_fig(row['classifications_per_slice'])} classifications and {_seconds(row['seconds_per_slice'])} "
        f"volunteer-seconds per slice{traced}{untimed}"
    )
    if row["task"] == "tracing":
        return line
    return (
        f"{line}; volunteer time saved against tracing {_share(row['saved_vs_tracing'])}; median correction Dice "
        f"{_fig(row['median_correction_dice'])}; corrected vs traced consensus (monitoring) Dice "
        f"{_fig(row['median_monitoring_dice'])} on {row['monitored_slices']} slices"
    )


def _share(value: Any) -> str:
    return "n/a" if value is None else f"{100 * float(value):.0f}%"


def _seconds(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.0f}"


def machine_marks_kept(session: Session, subject_ids: list[int | None]) -> tuple[int, int]:
    rows = session.exec(select(Classification.raw_annotations).where(col(Classification.subject_id).in_(subject_ids)))
    kept = total = 0
    for raw in rows:
        for task in json.loads(raw) if raw else []:
            for mark in task.get("value", []) if isinstance(task, dict) else []:
                if isinstance(mark, dict) and "markId" in mark:
                    total += 1
                    kept += is_machine_mark_id(str(mark["markId"]))
    return kept, total


def _counts(values: Iterable[str]) -> str:
    return ", ".join(f"{n} {value}" for value, n in Counter(values).most_common())


def _fig(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.2f}"


def _corrector_options(args: argparse.Namespace) -> list[str]:
    """The correcting crowd's mix, when the demo was given one."""
    options = ["--correctors", args.correctors] if args.correctors else []
    return options + (["--accepting", args.accepting] if args.accepting else [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--volume", type=Path, required=True)
    parser.add_argument("--sandbox-url", required=True)
    parser.add_argument("--minutes", type=float, default=12.0, help="time limit of the live loop")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--correctors",
        default=os.environ.get("DEMO_CORRECTORS", ""),
        help="the correcting crowd's corrector mix (DEMO_CORRECTORS; `etchacell sandbox volunteers --correctors`)",
    )
    parser.add_argument(
        "--accepting",
        default=os.environ.get("DEMO_ACCEPTING", ""),
        help="share of accept-anything correctors (DEMO_ACCEPTING)",
    )
    args = parser.parse_args(argv)
    settings = load_settings()
    engine = make_engine(settings.effective_database_url)
    binary = Path(os.environ.get("ETCHACELL_BIN", ".venv/bin")) / "etchacell"
    logs = settings.data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    segmentation = settings.panoptes.segmentation_workflow_id
    correction = settings.panoptes.correction_workflow_id
    crowd = [str(binary), "sandbox", "volunteers", "--url", args.sandbox_url, "--truth", str(args.volume), "--follow"]
    crowd += ["--subject-gap-s", str(SUBJECT_GAP_S)]
    started = time.monotonic()
    processes = {
        "daemon": start("daemon", [str(binary), "--log-format", "json", "daemon"], logs),
        "worker": start("worker", [str(binary), "worker", "--poll-s", "2"], logs),
        "tracing crowd": start("tracing-crowd", [*crowd, "--workflow", str(segmentation), "--seed", "1"], logs),
        "correcting crowd": start(
            "correcting-crowd",
            [*crowd, "--workflow", str(correction), "--seed", "2", "--rate", "3", *_corrector_options(args)],
            logs,
        ),
    }
    try:
        unfinished = watch(engine, processes, started + args.minutes * 60, args.rounds, settings.training)
    finally:
        stop(processes)
    seconds = time.monotonic() - started
    report(engine, seconds, settings.correction)
    engine.dispose()
    if unfinished is not None:
        print(f"\ndemo: the loop did not complete: {unfinished}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
