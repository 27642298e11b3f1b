"""Top-level CLI: help, unknown commands, bench usage, and `reproduce` over throw-away notebooks."""

from __future__ import annotations

import json
import subprocess
import sys

import nbformat
import pytest

from glimpse.__main__ import COMMANDS, main
from glimpse.papers import reproduce


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "glimpse", *args], capture_output=True,
                          text=True, timeout=120)


def test_help_lists_every_command():
    proc = _run("--help")
    assert proc.returncode == 0
    for name in COMMANDS:
        assert name in proc.stdout
    assert main([]) == 0


def test_unknown_command_is_an_error(capsys):
    proc = _run("frobnicate")
    assert proc.returncode == 2
    assert "unknown command 'frobnicate'" in proc.stderr
    assert main(["frobnicate"]) == 2


def test_bench_usage(capsys):
    assert main(["bench"]) == 0
    assert "usage: python -m glimpse bench" in capsys.readouterr().out
    assert main(["bench", "nope"]) == 2
    assert "usage" in capsys.readouterr().err


def test_reproduce_unknown_paper(capsys, tmp_path):
    assert reproduce.main(["--paper", "nope", "--notebooks", str(tmp_path)]) == 2
    assert "unknown paper" in capsys.readouterr().err


def test_reproduce_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["reproduce", "--help"])
    assert exc.value.code == 0
    assert "--profile" in capsys.readouterr().out


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
    rc = reproduce.main(["--notebooks", str(nbs), "--results-root", str(results),
                         "--seed", "7", "--timeout", "120"])
    out, err = capsys.readouterr()
    assert rc == 1
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
