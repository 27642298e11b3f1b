"""The only writer of ``results/``: tables, figures, headline scalars, manifests and the index.

Every artefact is written atomically (a temporary file in the same folder, then ``os.replace``)
and byte-stably: floats are rounded, CSVs end with ``"\\n"``, PNGs carry no software/date
metadata, and nothing but ``manifest.json`` holds a timestamp. So re-running a deterministic
notebook leaves ``git diff`` empty, and a diff that does appear means a number moved.

Layout::

    results/
      README.md                          generated index (write_index)
      <paper>/paper/<name>.csv           paper values, transcribed once, with a `source` column
      <paper>/<profile>/tables/<name>.csv|.md
      <paper>/<profile>/figures/<name>.png
      <paper>/<profile>/manifest.json    versions, git sha, device, config, seed, duration
      <paper>/runs/                      executed notebooks (git-ignored)
      bench/<name>.csv|.md|.json         benchmarks (write_bench)
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import importlib.util
import io
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from glimpse.io import atomic_write

__all__ = [
    "Reporter",
    "clean_notebook",
    "clean_notebook_file",
    "compare",
    "default_root",
    "environment",
    "load_paper",
    "PROFILE_ORDER",
    "repo_root",
    "table_to_markdown",
    "write_bench",
    "write_index",
]

# Subfolders of a paper folder that are not profiles.
_NOT_PROFILES = ("paper", "runs")
PROFILE_ORDER = ("smoke", "cpu", "full")


# --------------------------------------------------------------------------------------------
# Locations
# --------------------------------------------------------------------------------------------


def repo_root() -> Path | None:
    """The checkout glimpse is imported from (the folder holding ``pyproject.toml``), or None
    when glimpse is installed as a plain package."""
    candidate = Path(__file__).resolve().parents[1]
    return candidate if (candidate / "pyproject.toml").is_file() else None


def default_root() -> Path:
    """``<repo>/results`` for a checkout, else ``./results``."""
    repo = repo_root()
    return (repo if repo is not None else Path.cwd()) / "results"


def _resolve_root(root: str | os.PathLike | None) -> Path:
    # Notebook parameters are literals, so "" means "the default" just like None.
    if root is None or str(root) == "":
        return default_root()
    return Path(root)


# --------------------------------------------------------------------------------------------
# Tables: rounding, CSV and a dependency-free Markdown renderer
# --------------------------------------------------------------------------------------------


def _digits_for(column: str, float_digits: int | Mapping[str, int]) -> int:
    if isinstance(float_digits, Mapping):
        return int(float_digits.get(column, float_digits.get("*", 3)))
    return int(float_digits)


def _prepare(df: pd.DataFrame, float_digits: int | Mapping[str, int],
             sort_by: str | Sequence[str] | None) -> pd.DataFrame:
    """Copy of ``df`` with a named index turned into columns, floats rounded and rows sorted."""
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame, got {type(df).__name__}")
    out = df.copy()
    if isinstance(out.index, pd.MultiIndex) or out.index.name is not None:
        out = out.reset_index()
    else:
        out = out.reset_index(drop=True)
    out.columns = [str(c) for c in out.columns]
    if len(set(out.columns)) != len(out.columns):
        raise ValueError(f"duplicate column names: {list(out.columns)}")
    for col in out.columns:
        if pd.api.types.is_float_dtype(out[col]):
            out[col] = out[col].round(_digits_for(col, float_digits))
    if sort_by is not None:
        keys = [sort_by] if isinstance(sort_by, str) else list(sort_by)
        out = out.sort_values(keys, kind="mergesort").reset_index(drop=True)
    return out


def _cell_text(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        text = f"{value:.{digits}f}"
        return "0" + text[2:] if text.startswith("-0") and float(text) == 0 else text
    return str(value)


def _to_csv(df: pd.DataFrame, float_digits: int | Mapping[str, int]) -> str:
    # Format cells ourselves so that every float column has a fixed number of decimals
    # (pandas would print 37.3 and 37.25 with different widths and 1e-05 in exponent form).
    text = pd.DataFrame({
        col: [_cell_text(v, _digits_for(col, float_digits)) for v in df[col].tolist()]
        for col in df.columns
    }, columns=list(df.columns))
    return text.to_csv(index=False, lineterminator="\n")


def table_to_markdown(df: pd.DataFrame, float_digits: int | Mapping[str, int] = 3) -> str:
    """Render ``df`` (columns only, index ignored) as a GitHub Markdown table; numbers are
    right-aligned.

    Written here so that glimpse needs no ``tabulate``; missing values render as empty cells.
    """
    cols = [str(c) for c in df.columns]
    numeric = [pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])
               for c in df.columns]

    def esc(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    rows = [[esc(_cell_text(v, _digits_for(c, float_digits))) for v in df[c].tolist()]
            for c in df.columns]
    lines = ["| " + " | ".join(esc(c) for c in cols) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    for i in range(len(df)):
        lines.append("| " + " | ".join(col[i] for col in rows) + " |")
    return "\n".join(lines) + "\n"


def load_paper(paper: str, name: str, *, root: str | os.PathLike | None = None) -> pd.DataFrame:
    """Paper values transcribed once into ``results/<paper>/paper/<name>.csv``.

    Raises:
        FileNotFoundError: the CSV does not exist (its path is named).
        ValueError: the CSV has no ``source`` column or an empty source cell.
    """
    path = _resolve_root(root) / paper / "paper" / f"{name}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"paper values not found: {path}")
    df = pd.read_csv(path, keep_default_na=False, na_values=[""])
    if "source" not in df.columns:
        raise ValueError(f"{path}: every paper CSV needs a 'source' column (e.g. 'Table 1, p.6')")
    if df["source"].isna().any():
        raise ValueError(f"{path}: rows {df.index[df['source'].isna()].tolist()} have no source")
    return df


def compare(paper: pd.DataFrame, measured: pd.DataFrame, *, on: str | Sequence[str],
            profile: str, values: Sequence[str] | None = None) -> pd.DataFrame:
    """Side-by-side table: paper value, glimpse value, delta (glimpse - paper), profile, source.

    Args:
        paper: transcribed values with key columns ``on``, value columns and ``source``.
        measured: glimpse's values with the same key columns.
        on: key column(s) shared by both tables (e.g. ``"model"``).
        profile: the profile that produced ``measured`` (smoke numbers on synthetic data are
            not comparable with COCO numbers; the column says so on every row).
        values: value columns to compare; default all non-key columns present in both.

    Returns:
        One row per key in either table (paper order first, then glimpse-only keys), with
        ``<v>_paper``, ``<v>_glimpse``, ``<v>_delta`` per value column, then ``profile`` and
        ``source``. Missing values stay NaN.
    """
    keys = [on] if isinstance(on, str) else list(on)
    for name, df in (("paper", paper), ("measured", measured)):
        missing = [k for k in keys if k not in df.columns]
        if missing:
            raise KeyError(f"{name} table has no key column(s) {missing}; "
                           f"columns: {list(df.columns)}")
    if values is None:
        values = [c for c in paper.columns if c in measured.columns and c not in keys
                  and c != "source"]
    if not values:
        raise ValueError("no value column is shared by the paper and measured tables")
    left = paper[keys + list(values) + (["source"] if "source" in paper.columns else [])]
    right = measured[keys + list(values)]
    merged = left.merge(right, on=keys, how="outer", suffixes=("_paper", "_glimpse"), sort=False)
    # outer merge orders keys by appearance in `left`, then the right-only keys
    out = merged[keys].copy()
    for v in values:
        p = pd.to_numeric(merged[f"{v}_paper"], errors="coerce")
        g = pd.to_numeric(merged[f"{v}_glimpse"], errors="coerce")
        out[f"{v}_paper"] = merged[f"{v}_paper"]
        out[f"{v}_glimpse"] = merged[f"{v}_glimpse"]
        out[f"{v}_delta"] = g - p
    out["profile"] = profile
    out["source"] = merged["source"] if "source" in merged.columns else ""
    return out


# --------------------------------------------------------------------------------------------
# Environment facts for manifests
# --------------------------------------------------------------------------------------------


def _git(*args: str) -> str | None:
    repo = repo_root()
    if repo is None:
        return None
    try:
        proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                              timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def environment() -> dict[str, Any]:
    """Versions, device and git state, for manifests (no timestamps)."""
    import numpy
    import torch
    import torchvision

    status = _git("status", "--porcelain", "--untracked-files=no")
    cuda = torch.cuda.is_available()
    return {
        "git_sha": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "pandas": pd.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": cuda,
        "device_name": torch.cuda.get_device_name(0) if cuda else (platform.processor()
                                                                  or platform.machine()),
        "glimpse_kernels": importlib.util.find_spec("glimpse_kernels") is not None,
        "torch_threads": torch.get_num_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "platform": platform.platform(),
    }


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = [_jsonable(v) for v in obj]
        return sorted(items, key=repr) if isinstance(obj, (set, frozenset)) else items
    if isinstance(obj, float):
        return None if math.isnan(obj) else obj
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return repr(obj)


def _dumps(obj: Any) -> str:
    return json.dumps(_jsonable(obj), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


# --------------------------------------------------------------------------------------------
# Reporter
# --------------------------------------------------------------------------------------------


class Reporter:
    """Writes one paper's artefacts for one profile under ``<root>/<paper>/<profile>/``.

    Args:
        paper: paper folder name (``"codebase"``, ``"fishnet"``, ...).
        profile: ``"smoke"``, ``"cpu"`` or ``"full"``.
        root: results folder; None or ``""`` means :func:`default_root`.
        config: resolved configuration (a dataclass or mapping), stored in the manifest.
        data: short description of the data (e.g. ``"synthetic-smoke"``), stored in the manifest.
        seed: the run's seed, stored in the manifest and the summary.

    Example::

        rep = Reporter("codebase", profile="smoke", config=cfg, data="synthetic-smoke")
        rep.table("baselines", df)      # tables/baselines.csv + .md
        rep.figure("anchors", fig)      # figures/anchors.png
        rep.scalar("num_methods", 9)
        print(rep.summary())            # the notebook's NBVAL_CHECK_OUTPUT cell
        rep.finalize()                  # manifest.json + results/README.md
    """

    def __init__(self, paper: str, *, profile: str, root: str | os.PathLike | None = None,
                 config: Any = None, data: str | Mapping[str, Any] | None = None,
                 seed: int = 0) -> None:
        for label, value in (("paper", paper), ("profile", profile)):
            if not value or any(ch in str(value) for ch in "/\\ ") or str(value).startswith("."):
                raise ValueError(f"Reporter: invalid {label} name {value!r}")
        if profile in _NOT_PROFILES:
            raise ValueError(f"Reporter: {profile!r} is reserved, not a profile name")
        self.paper = paper
        self.profile = profile
        self.root = _resolve_root(root)
        self.config = config
        self.data = data
        self.seed = int(seed)
        self.tables: dict[str, pd.DataFrame] = {}
        self.figures: dict[str, list[str]] = {}
        self.scalars: dict[str, tuple[Any, int | None, bool]] = {}
        self._start_wall = _dt.datetime.now(_dt.timezone.utc)
        self._start = time.perf_counter()

    @property
    def out_dir(self) -> Path:
        """``<root>/<paper>/<profile>``."""
        return self.root / self.paper / self.profile

    # -- artefacts ---------------------------------------------------------------------------

    def table(self, name: str, df: pd.DataFrame, *, float_digits: int | Mapping[str, int] = 3,
              sort_by: str | Sequence[str] | None = None) -> pd.DataFrame:
        """Write ``tables/<name>.csv`` and ``tables/<name>.md`` and return the rounded table.

        Args:
            name: file stem.
            df: the table; a named index becomes a column, an unnamed one is dropped.
            float_digits: decimals for float columns (an int, or
                ``{column: digits, "*": default}``).
            sort_by: column(s) to sort rows by (stable); None keeps the given (deterministic) order.
        """
        _check_name(name)
        out = _prepare(df, float_digits, sort_by)
        folder = self.out_dir / "tables"
        atomic_write(folder / f"{name}.csv", _to_csv(out, float_digits))
        atomic_write(folder / f"{name}.md", table_to_markdown(out, float_digits))
        self.tables[name] = out
        return out

    def figure(self, name: str, fig: Any, *, dpi: int = 100, svg: bool = False) -> Path:
        """Write ``figures/<name>.png`` (and ``.svg`` when asked) byte-stably.

        PNG metadata (``Software``) and the SVG date are dropped and the SVG hash salt is fixed,
        so the same figure gives the same bytes on every run.
        """
        import matplotlib

        _check_name(name)
        folder = self.out_dir / "figures"
        written = []
        with matplotlib.rc_context({"svg.hashsalt": "glimpse", "svg.fonttype": "path"}):
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
            atomic_write(folder / f"{name}.png", buf.getvalue())
            written.append(f"{name}.png")
            if svg:
                buf = io.BytesIO()
                fig.savefig(buf, format="svg", dpi=dpi, metadata={"Date": None})
                atomic_write(folder / f"{name}.svg", buf.getvalue())
                written.append(f"{name}.svg")
        self.figures[name] = written
        return folder / f"{name}.png"

    def scalar(self, name: str, value: Any, *, digits: int | None = 3,
               in_summary: bool = True) -> Any:
        """Record a headline number (kept in the manifest and, unless ``in_summary=False``, in
        :meth:`summary`). Use ``in_summary=False`` for values that may differ across CPUs in the
        last digits (trained APs), since nbval compares the summary text exactly."""
        _check_name(name)
        self.scalars[name] = (value, digits, in_summary)
        return value

    def compare(self, paper_table: str, measured: pd.DataFrame, *, on: str | Sequence[str],
                values: Sequence[str] | None = None) -> pd.DataFrame:
        """:func:`compare` of ``results/<paper>/paper/<paper_table>.csv`` against ``measured``."""
        paper_df = load_paper(self.paper, paper_table, root=self.root)
        return compare(paper_df, measured, on=on, profile=self.profile, values=values)

    # -- summary and manifest ----------------------------------------------------------------

    def summary(self) -> str:
        """Rounded, sorted, timestamp-free text of what this run produced (for nbval)."""
        lines = [f"{self.paper} / {self.profile} (seed {self.seed})"]
        for name in sorted(self.scalars):
            value, digits, shown = self.scalars[name]
            if shown:
                text = _cell_text(float(value), digits) if (
                    digits is not None and isinstance(value, float)) else str(value)
                lines.append(f"scalar {name} = {text}")
        for name in sorted(self.tables):
            t = self.tables[name]
            lines.append(f"table {name}: {len(t)} rows x {len(t.columns)} cols")
        for name in sorted(self.figures):
            lines.append(f"figure {name}: {', '.join(self.figures[name])}")
        return "\n".join(lines)

    def finalize(self, *, index: bool = True) -> Path:
        """Write ``manifest.json`` (the one file with timestamps) and regenerate the index."""
        manifest = {
            "paper": self.paper,
            "profile": self.profile,
            "seed": self.seed,
            "data": self.data,
            "config": self.config,
            "tables": sorted(f"tables/{n}.csv" for n in self.tables),
            "figures": sorted(f"figures/{f}" for fs in self.figures.values() for f in fs),
            "scalars": {k: v[0] for k, v in sorted(self.scalars.items())},
            "environment": environment(),
            "start_time": self._start_wall.isoformat(timespec="seconds"),
            "duration_s": round(time.perf_counter() - self._start, 1),
            "command": " ".join(sys.argv[:1]),
        }
        path = atomic_write(self.out_dir / "manifest.json", _dumps(manifest))
        if index:
            write_index(self.root)
        return path


def _check_name(name: str) -> None:
    if not name or any(ch in name for ch in "/\\ ") or name.startswith("."):
        raise ValueError(f"invalid artefact name {name!r} (no slashes, spaces or leading dot)")


# --------------------------------------------------------------------------------------------
# Benchmarks and the index
# --------------------------------------------------------------------------------------------


def write_bench(name: str, df: pd.DataFrame, *, root: str | os.PathLike | None = None,
                float_digits: int | Mapping[str, int] = 3,
                machine: Mapping[str, Any] | None = None) -> Path:
    """Write ``results/bench/<name>.csv`` and ``.md``; ``machine`` (threads, device, ...) goes
    into ``<name>.json`` and one line of the Markdown. Returns the CSV path."""
    _check_name(name)
    folder = _resolve_root(root) / "bench"
    out = _prepare(df, float_digits, None)
    csv_path = atomic_write(folder / f"{name}.csv", _to_csv(out, float_digits))
    md = table_to_markdown(out, float_digits)
    if machine:
        info = ", ".join(f"{k}: {machine[k]}" for k in sorted(machine))
        md = f"Machine: {info}\n\n{md}"
        atomic_write(folder / f"{name}.json", _dumps(dict(machine)))
    atomic_write(folder / f"{name}.md", md)
    return csv_path


def _profile_key(name: str) -> tuple[int, str]:
    return (PROFILE_ORDER.index(name) if name in PROFILE_ORDER else len(PROFILE_ORDER), name)


def write_index(root: str | os.PathLike | None = None) -> Path:
    """Generate ``<root>/README.md``: paper -> artefact -> file -> profile -> manifest.

    The index lists what is on disk (sorted, no timestamps), so it is the same whichever run
    wrote it last.
    """
    root = _resolve_root(root)
    root.mkdir(parents=True, exist_ok=True)
    lines = [
        "# glimpse results",
        "",
        "Generated by `glimpse.report.write_index`; do not edit. Each profile folder holds",
        "`tables/` (CSV is the truth, Markdown is rendered from it), `figures/` and a",
        "`manifest.json` (git sha, versions, device, resolved config, seed, duration).",
        "Paper values are transcribed once under `<paper>/paper/` with a `source` column.",
        "",
    ]
    papers = sorted(p for p in root.iterdir() if p.is_dir() and p.name != "bench"
                    and not p.name.startswith("."))
    for paper in papers:
        rows = []
        for csv in sorted((paper / "paper").glob("*.csv")):
            rows.append(("paper values", csv.stem, csv.relative_to(root).as_posix(), "paper", ""))
        profiles = sorted((p for p in paper.iterdir() if p.is_dir()
                           and p.name not in _NOT_PROFILES and not p.name.startswith(".")),
                          key=lambda p: _profile_key(p.name))
        for prof in profiles:
            manifest = prof / "manifest.json"
            mf = (f"[manifest]({manifest.relative_to(root).as_posix()})"
                  if manifest.is_file() else "")
            for kind, folder, pattern in (("table", "tables", "*.csv"),
                                          ("figure", "figures", "*.png"),
                                          ("figure", "figures", "*.svg")):
                for f in sorted((prof / folder).glob(pattern)):
                    rows.append((kind, f.stem, f.relative_to(root).as_posix(), prof.name, mf))
        if not rows:
            continue
        lines += [f"## {paper.name}", "", "| artefact | name | file | profile | manifest |",
                  "|---|---|---|---|---|"]
        lines += [f"| {k} | {n} | [{f}]({f}) | {p} | {m} |" for k, n, f, p, m in rows]
        lines.append("")
    bench = sorted((root / "bench").glob("*.csv")) if (root / "bench").is_dir() else []
    if bench:
        lines += ["## bench", "", "| benchmark | file |", "|---|---|"]
        lines += [f"| {f.stem} | [{f.relative_to(root).as_posix()}]"
                  f"({f.relative_to(root).as_posix()}) |" for f in bench]
        lines.append("")
    return atomic_write(root / "README.md", "\n".join(lines).rstrip("\n") + "\n")


# --------------------------------------------------------------------------------------------
# Notebook cleaning
# --------------------------------------------------------------------------------------------

_CELL_KEYS = ("execution", "papermill", "ExecuteTime", "collapsed", "scrolled")
_WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def clean_notebook(nb: Any, *, keep_injected: bool = False) -> Any:
    """Strip volatile metadata from an nbformat v4 notebook in place and return it.

    Removes ``metadata.papermill`` and ``metadata.widgets``, per-cell ``execution`` /
    ``papermill`` / ``ExecuteTime`` metadata and widget views (outputs are kept otherwise), and
    papermill's ``injected-parameters`` cells unless ``keep_injected``. Execution counts are
    renumbered 1, 2, 3, ... over the code cells, as a clean "Restart & Run All" leaves them:
    nbval refuses to compare a cell that has outputs but no execution count, and sequential
    numbers stay the same from run to run.
    """
    nb.metadata.pop("papermill", None)
    nb.metadata.pop("widgets", None)
    cells = []
    count = 0
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if "injected-parameters" in tags and not keep_injected:
            continue
        for key in _CELL_KEYS:
            cell.metadata.pop(key, None)
        if cell.cell_type == "code":
            count += 1
            cell.execution_count = count
            outputs = []
            for out in cell.get("outputs", []):
                if "execution_count" in out:
                    out["execution_count"] = count
                data = out.get("data")
                if data is not None and _WIDGET_MIME in data:
                    del data[_WIDGET_MIME]
                    if not data:
                        continue
                outputs.append(out)
            cell.outputs = outputs
        cells.append(cell)
    nb.cells = cells
    return nb


def clean_notebook_file(path: str | os.PathLike, *, keep_injected: bool = False) -> Path:
    """Clean the notebook at ``path`` in place (:func:`clean_notebook`), atomically.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is not a readable notebook (the message names it).
    """
    import nbformat

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as exc:  # nbformat raises several types for malformed JSON
        raise ValueError(f"{path}: not a readable notebook ({exc})") from exc
    clean_notebook(nb, keep_injected=keep_injected)
    text = nbformat.writes(nb)
    return atomic_write(path, text if text.endswith("\n") else text + "\n")
