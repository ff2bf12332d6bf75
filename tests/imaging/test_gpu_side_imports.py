"""What a GPU machine runs of the envelope bench — remaking the volume, training, predicting, scoring —
imports without the daemon's, the dashboard's and Zooniverse's libraries, which it lacks."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
BENCH = REPOSITORY / "bench" / "bench_envelope.py"
NOT_ON_A_GPU_MACHINE = (
    "pydantic", "pydantic_settings", "sqlalchemy", "sqlmodel", "orjson", "typer", "fastapi", "pandas",
    "panoptes_client",
)  # fmt: skip
IMAGING_MODULES = (
    "etchacell_loop.imaging.synth_volume", "etchacell_loop.imaging.volume", "etchacell_loop.imaging.omezarr",
    "etchacell_loop.imaging.manifest",
)  # fmt: skip


def run_without_the_daemons_libraries(body: str) -> subprocess.CompletedProcess[str]:
    program = textwrap.dedent(
        f"""
        import importlib, importlib.abc, importlib.util, sys

        class Missing(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {NOT_ON_A_GPU_MACHINE!r}:
                    raise ImportError(f"{{name}} is not installed on a GPU machine")
                return None

        sys.meta_path.insert(0, Missing())
        """
    )
    return subprocess.run(
        [sys.executable, "-c", program + textwrap.dedent(body)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPOSITORY,
    )


def test_the_volume_modules_import_without_the_daemons_libraries() -> None:
    done = run_without_the_daemons_libraries(
        f"""
        for module in {IMAGING_MODULES!r}:
            importlib.import_module(module)
        print("ok")
        """
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("ok")


def test_the_benchs_model_stages_import_without_the_daemons_libraries(tmp_path: Path) -> None:
    done = run_without_the_daemons_libraries(
        f"""
        spec = importlib.util.spec_from_file_location("bench_envelope", {str(BENCH)!r})
        bench = sys.modules["bench_envelope"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
        bench.import_model_stack()
        args = bench.parse_args(["--work", {str(tmp_path)!r}, "--stages", "model", "--preset", "paper"])
        print(args.stages, bench.schedule(args))
        """
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "model (100, 100)"  # the paper's schedule by default
