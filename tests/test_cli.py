"""Top-level CLI: help, unknown commands, bench usage, `reproduce` over throw-away notebooks
(progress shown, no kernel transport warning), one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import nbformat

from glimpse.cli import main
from glimpse.papers import reproduce
from glimpse.report import PROFILE_ORDER

COMMANDS = ("train", "evaluate", "test", "reproduce", "bench", "data", "clean-notebooks")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "glimpse", *args], capture_output=True,
                          text=True, timeout=120)


def test_help_lists_every_command():
    proc = _run("--help")
    assert proc.returncode == 0
    for name in COMMANDS:
        assert name in proc.stdout
    assert main([]) == 0


def test_unknown_command_is_a_one_line_error(capsys):
    proc = _run("frobnicate")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "invalid choice: 'frobnicate'" in proc.stderr
    assert main(["frobnicate"]) == 2


def test_bench_usage(capsys):
    assert main(["bench"]) == 0
    assert "usage: python -m glimpse bench" in capsys.readouterr().out
    assert main(["bench", "nope"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'nope'" in err and err.count("\n") == 1
    assert main(["bench", "detectors", "--repeats", "0"]) == 2
    assert capsys.readouterr().err == ("glimpse bench detectors: error: --repeats and --threads "
                                       "must be >= 1\n")


def test_reproduce_unknown_paper(capsys, tmp_path):
    assert main(["reproduce", "--paper", "nope", "--notebooks", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("glimpse reproduce: error: unknown paper") and err.count("\n") == 1


def test_reproduce_help(capsys):
    assert main(["reproduce", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--profile" in out and "--no-progress" in out
    assert "{" + ",".join(PROFILE_ORDER) + "}" in out  # the reporter's profiles, in its order


def test_bad_input_ends_with_one_line(tmp_path, capsys):
    ann = tmp_path / "ann.json"
    ann.write_text("{not json")
    assert main(["data", "check", "--image-dir", str(tmp_path), "--ann", str(ann)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("glimpse data check: error: ") and "ann.json" in err
    assert err.count("\n") == 1
    assert main(["train", "faster_rcnn_slim_fpn", "--data", "synthetic-smoke"]) == 2
    assert "--work-dir" in capsys.readouterr().err


def _notebook(path, body: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell('profile = "smoke"\ndevice = "auto"\ndata_root = ""\n'
                                  'results_root = ""\nseed = 0', metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(body),
    ]
    nbformat.write(nb, path)


def test_discover_orders_by_number(tmp_path):
    for name in ("01_b.ipynb", "00_a.ipynb", "_template.ipynb", "x.ipynb"):
        (tmp_path / name).write_text("{}")
    assert list(reproduce.discover(tmp_path)) == ["a", "b"]


def test_reproduce_runs_all_and_reports_failures(tmp_path, capsys):
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    _notebook(nbs / "00_good.ipynb",
              "import pandas as pd\nfrom glimpse.report import Reporter\n"
              'rep = Reporter("good", profile=profile, root=results_root, seed=seed)\n'
              'rep.table("t", pd.DataFrame({"a": [seed]}))\nrep.finalize()')
    _notebook(nbs / "01_bad.ipynb", 'raise ValueError("broken on purpose")')
    results = tmp_path / "results"
    rc = main(["reproduce", "--notebooks", str(nbs), "--results-root", str(results),
               "--seed", "7", "--timeout", "120"])
    out, err = capsys.readouterr()
    assert rc == 1
    assert "== [1/2] 00_good.ipynb" in out and "== [2/2] 01_bad.ipynb" in out
    # the failing notebook is named with its cell error, after the good one ran
    assert ("01_bad.ipynb: ValueError: broken on purpose [in the cell starting "
            "'raise ValueError(\"broken on purpose\")']") in err
    assert "[ok] good" in out and "[FAILED] bad" in out
    assert (results / "good/smoke/tables/t.csv").read_text() == "a\n7\n"
    assert "good/smoke/tables/t.csv" in out
    manifest = json.loads((results / "good/smoke/manifest.json").read_text())
    assert manifest["seed"] == 7
    assert (results / "good/runs/00_good_smoke.ipynb").is_file()
    assert (results / "bad/runs/01_bad_smoke.ipynb").is_file()
    index = (results / "README.md").read_text()
    assert "good/smoke/tables/t.csv" in index


def test_reproduce_shows_cell_progress_and_no_transport_warning(tmp_path):
    """The kernel's stderr reaches the terminal: over TCP, ipykernel warns about unencrypted
    transport at every start; the progress bar names the notebook and counts its cells."""
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    _notebook(nbs / "00_tiny.ipynb", "print(seed)")
    proc = _run("reproduce", "--notebooks", str(nbs), "--results-root", str(tmp_path / "r"))
    assert proc.returncode == 0, proc.stderr
    assert "without encryption" not in proc.stderr and "WARNING" not in proc.stderr
    # 3 cells: parameters, papermill's injected parameters, the body
    assert "00_tiny: 100%" in proc.stderr and "3/3" in proc.stderr
    assert "[ok] tiny" in proc.stdout
