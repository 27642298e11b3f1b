"""Run the paper notebooks with papermill (``python -m glimpse reproduce``, in
:mod:`glimpse.cli`) and find the tables and figures each run wrote.

Notebooks are discovered by name, ``notebooks/NN_<paper>.ipynb``; each runs with the parameters
``profile``, ``device``, ``data_root`` and ``seed`` (and ``results_root`` when given) injected,
from the repository root, and its executed copy lands in the git-ignored
``results/<paper>/runs/<NN_paper>_<profile>.ipynb``. A notebook that declares ``interactive``
gets ``interactive = False``: batch runs draw only the static renderings, never ipywidgets
sliders (with no frontend to answer them, an ``interact`` cell once hung under papermill).
A failing notebook does not stop the others: :func:`run_notebook` returns the failing cell's
error on one line instead of raising.

The kernel talks to papermill over IPC (Unix sockets) rather than TCP: both run on this machine,
and over TCP ipykernel prints a warning about unencrypted transport at every start.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from glimpse.report import repo_root

__all__ = ["NotebookRun", "artefacts", "base_dir", "batch_parameters", "discover", "run_notebook"]

_NOTEBOOK_RE = re.compile(r"^(\d\d)_([a-z0-9_]+)\.ipynb$")


@dataclass(frozen=True)
class NotebookRun:
    """Outcome of one notebook run."""

    paper: str
    notebook: Path
    output: Path
    seconds: float
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def base_dir() -> Path:
    """The repository root when glimpse runs from a checkout, else the current folder."""
    repo = repo_root()
    return repo if repo is not None else Path.cwd()


def discover(notebooks_dir: Path | None = None) -> dict[str, Path]:
    """``{paper: notebook}`` for every ``NN_<paper>.ipynb`` in ``notebooks/``, in NN order."""
    folder = notebooks_dir if notebooks_dir is not None else base_dir() / "notebooks"
    found = sorted((p for p in folder.glob("*.ipynb") if _NOTEBOOK_RE.match(p.name)),
                   key=lambda p: p.name)
    return {_NOTEBOOK_RE.match(p.name).group(2): p for p in found}


def batch_parameters(notebook: Path, parameters: dict) -> dict:
    """``parameters`` plus ``interactive=False`` when ``notebook``'s ``parameters`` cell declares
    ``interactive`` (papermill warns about a parameter a notebook does not declare)."""
    import papermill

    if "interactive" in papermill.inspect_notebook(str(notebook)):
        return {**parameters, "interactive": False}
    return dict(parameters)


def _one_line(text: str, limit: int = 300) -> str:
    # strip ANSI colour codes that IPython puts in tracebacks
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(text))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_notebook(paper: str, notebook: Path, *, profile: str, results_root: Path,
                 parameters: dict, timeout: float | None, cwd: Path | None = None,
                 progress: bool = True) -> NotebookRun:
    """Execute one notebook with papermill; never raises for a failing cell.

    Args:
        paper / notebook: the paper's name and its ``NN_<paper>.ipynb``.
        profile: names the executed copy ``results/<paper>/runs/<NN_paper>_<profile>.ipynb``.
        results_root: where ``<paper>/runs/`` goes.
        parameters: injected into the notebook's ``parameters`` cell, with ``interactive=False``
            where the notebook declares it (:func:`batch_parameters`).
        timeout: per-cell execution timeout in seconds (None: none).
        cwd: the kernel's working folder (default: :func:`base_dir`).
        progress: a progress bar on stderr: the notebook, cells done of all, elapsed time.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError
    from traitlets.config import Config

    output = results_root / paper / "runs" / f"{notebook.stem}_{profile}.ipynb"
    output.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    error = None
    # A socket path has at most 107 bytes: the sockets go to a short private folder, not
    # next to the connection file in the (possibly deep) Jupyter runtime folder.
    sockets = tempfile.TemporaryDirectory(prefix="glimpse-kernel-")
    try:
        papermill.execute_notebook(
            str(notebook), str(output), parameters=batch_parameters(notebook, parameters),
            kernel_name="python3",
            cwd=str(cwd if cwd is not None else base_dir()),
            progress_bar={"desc": notebook.stem, "unit": "cell"} if progress else False,
            log_output=False, execution_timeout=None if timeout is None else int(timeout),
            config=Config({"KernelManager": {"transport": "ipc",
                                             "ip": os.path.join(sockets.name, "k")}}))
    except PapermillExecutionError as exc:
        first = next((ln for ln in str(exc.source).splitlines() if ln.strip()), "")
        error = _one_line(f"{exc.ename}: {exc.evalue} [in the cell starting {first[:60]!r}]")
    except Exception as exc:  # kernel death, timeouts, unreadable notebooks: report and go on
        error = _one_line(f"{type(exc).__name__}: {exc}")
    finally:
        sockets.cleanup()
    return NotebookRun(paper, notebook, output, time.perf_counter() - start, error)


def artefacts(results_root: Path, paper: str, profile: str) -> list[str]:
    """Files the run wrote, from its manifest when present, else from the folder."""
    folder = results_root / paper / profile
    manifest = folder / "manifest.json"
    if manifest.is_file():
        try:
            data = json.loads(manifest.read_text())
            files = list(data.get("tables", [])) + list(data.get("figures", []))
            return [str(folder / f) for f in files] + [str(manifest)]
        except (OSError, ValueError):
            pass
    files = sorted(folder.glob("tables/*.csv")) + sorted(folder.glob("figures/*"))
    return [str(f) for f in files]
