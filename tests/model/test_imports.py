"""The model imports with the deep-learning stack and the array libraries alone: a GPU machine needs
nothing else (no settings, database, web or Zooniverse libraries)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# What a GPU machine may lack: the daemon's and the dashboard's libraries.
NOT_ON_A_GPU_MACHINE = (
    "pydantic", "pydantic_settings", "sqlalchemy", "sqlmodel", "alembic", "psycopg", "orjson", "typer",
    "fastapi", "uvicorn", "starlette", "jinja2", "panoptes_client", "pandas", "apscheduler", "httpx",
)  # fmt: skip
GPU_MODULES = (
    "etchacell_loop.model.presets", "etchacell_loop.model.tap", "etchacell_loop.model.data",
    "etchacell_loop.model.metrics", "etchacell_loop.model.evaluation", "etchacell_loop.model.predict",
    "etchacell_loop.model.scoring", "etchacell_loop.model.pipeline", "etchacell_loop.model.backend",
    "etchacell_loop.model.unet",
    "etchacell_loop.model.keras_io", "etchacell_loop.model.train",
)  # fmt: skip


def test_the_gpu_side_of_the_model_imports_without_the_daemons_libraries() -> None:
    program = textwrap.dedent(
        f"""
        import importlib, importlib.abc, sys

        class Missing(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {NOT_ON_A_GPU_MACHINE!r}:
                    raise ImportError(f"{{name}} is not installed on a GPU machine")
                return None

        sys.meta_path.insert(0, Missing())
        for module in {GPU_MODULES!r}:
            importlib.import_module(module)
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("ok")
