"""``python -m glimpse reproduce``: run the paper notebooks with papermill and say where each
table and figure went.

Notebooks are discovered by name, ``notebooks/NN_<paper>.ipynb``; each runs with the parameters
``profile``, ``device``, ``data_root`` and ``seed`` (and ``results_root`` when given) injected,
from the repository root, and its executed copy lands in the git-ignored
``results/<paper>/runs/<NN_paper>_<profile>.ipynb``.
A failing notebook does not stop the others; the command exits non-zero at the end and names
every failure with the failing cell's error on one line.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from glimpse.report import default_root, repo_root, write_index

__all__ = ["NotebookRun", "discover", "main", "run_notebook"]

_NOTEBOOK_RE = re.compile(r"^(\d\d)_([a-z0-9_]+)\.ipynb$")
PROFILES = ("smoke", "cpu", "full")


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


def _base_dir() -> Path:
    repo = repo_root()
    return repo if repo is not None else Path.cwd()


def discover(notebooks_dir: Path | None = None) -> dict[str, Path]:
    """``{paper: notebook}`` for every ``NN_<paper>.ipynb`` in ``notebooks/``, in NN order."""
    folder = notebooks_dir if notebooks_dir is not None else _base_dir() / "notebooks"
    found = sorted((p for p in folder.glob("*.ipynb") if _NOTEBOOK_RE.match(p.name)),
                   key=lambda p: p.name)
    return {_NOTEBOOK_RE.match(p.name).group(2): p for p in found}


def _one_line(text: str, limit: int = 300) -> str:
    # strip ANSI colour codes that IPython puts in tracebacks
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(text))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_notebook(paper: str, notebook: Path, *, profile: str, results_root: Path,
                 parameters: dict, timeout: float | None, cwd: Path) -> NotebookRun:
    """Execute one notebook with papermill; never raises for a failing cell."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    output = results_root / paper / "runs" / f"{notebook.stem}_{profile}.ipynb"
    output.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    error = None
    try:
        papermill.execute_notebook(
            str(notebook), str(output), parameters=parameters, kernel_name="python3",
            cwd=str(cwd), progress_bar=False, log_output=False,
            execution_timeout=None if timeout is None else int(timeout))
    except PapermillExecutionError as exc:
        first = next((ln for ln in str(exc.source).splitlines() if ln.strip()), "")
        error = _one_line(f"{exc.ename}: {exc.evalue} [in the cell starting {first[:60]!r}]")
    except Exception as exc:  # kernel death, timeouts, unreadable notebooks: report and go on
        error = _one_line(f"{type(exc).__name__}: {exc}")
    return NotebookRun(paper, notebook, output, time.perf_counter() - start, error)


def _artefacts(results_root: Path, paper: str, profile: str) -> list[str]:
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


def main(argv: list[str] | None = None) -> int:
    """Run the notebooks; returns 0 when all succeeded, 1 when any failed, 2 on bad arguments."""
    available = _discover_from_argv(argv)
    parser = argparse.ArgumentParser(
        prog="python -m glimpse reproduce",
        description="Run the paper notebooks (papermill) and regenerate results/.")
    parser.add_argument("--paper", action="append", metavar="NAME",
                        help=f"paper to run (repeatable); default all of: {', '.join(available)}")
    parser.add_argument("--profile", default="smoke", choices=PROFILES,
                        help="smoke: CPU minutes on synthetic data; cpu: tens of minutes, "
                             "synthetic + COCO128; full: the papers' data and schedules (GPUs)")
    parser.add_argument("--data-root", default="", metavar="DIR",
                        help="folder holding coco/, imagenet/, ade20k/, places/ (data/README.md)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=None, metavar="S",
                        help="per-cell execution timeout in seconds (default: none)")
    parser.add_argument("--results-root", type=Path, default=None, metavar="DIR",
                        help="where results go (default: <repo>/results)")
    parser.add_argument("--notebooks", type=Path, default=None, metavar="DIR",
                        help="folder of NN_<paper>.ipynb notebooks (default: <repo>/notebooks)")
    args = parser.parse_args(argv)

    papers = args.paper or list(available)
    unknown = [p for p in papers if p not in available]
    if unknown:
        print(f"reproduce: unknown paper(s) {unknown}; available: {list(available)}",
              file=sys.stderr)
        return 2
    if not papers:
        print("reproduce: no notebooks found (expected notebooks/NN_<paper>.ipynb)",
              file=sys.stderr)
        return 2

    results_root = args.results_root if args.results_root is not None else default_root()
    parameters = {"profile": args.profile, "device": args.device, "data_root": args.data_root,
                  "seed": args.seed}
    if args.results_root is not None:
        parameters["results_root"] = str(results_root.resolve())
    runs = []
    for paper in papers:
        print(f"== {available[paper].name} (profile {args.profile})", flush=True)
        run = run_notebook(paper, available[paper], profile=args.profile,
                           results_root=results_root, parameters=parameters,
                           timeout=args.timeout, cwd=_base_dir())
        runs.append(run)
        for path in _artefacts(results_root, paper, args.profile):
            print(f"   {path}")
        status = "ok" if run.ok else "FAILED"
        print(f"   [{status}] {paper}: {run.seconds:.1f} s; executed notebook: {run.output}",
              flush=True)
    write_index(results_root)
    print(f"index: {results_root / 'README.md'}")
    failed = [r for r in runs if not r.ok]
    if failed:
        print(f"\n{len(failed)} of {len(runs)} notebook(s) failed:", file=sys.stderr)
        for r in failed:
            print(f"  {r.notebook.name}: {r.error}", file=sys.stderr)
        return 1
    return 0


def _discover_from_argv(argv: list[str] | None) -> dict[str, Path]:
    """Notebooks of ``--notebooks DIR`` when ``argv`` has it (needed before parsing, for help)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for i, arg in enumerate(argv):
        if arg == "--notebooks" and i + 1 < len(argv):
            return discover(Path(argv[i + 1]))
        if arg.startswith("--notebooks="):
            return discover(Path(arg.split("=", 1)[1]))
    return discover()
