"""glimpse.papers.reproduce hands papermill ``interactive=False`` for every notebook that declares
it (batch runs never start ipywidgets sliders), and nothing extra for the others; papermill
itself is replaced, so no notebook runs."""

from __future__ import annotations

import nbformat
import papermill
import pytest

from glimpse.cli import main
from glimpse.papers import reproduce

INTERACTIVE_NOTEBOOKS = ("guided_anchoring", "carafe", "htc")


def _notebook(path, parameters: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("print(seed)")]
    nbformat.write(nb, path)


@pytest.fixture
def handed(monkeypatch) -> dict:
    """``{notebook stem: parameters}`` that papermill.execute_notebook was called with."""
    calls = {}

    def execute_notebook(input_path, output_path, *, parameters, **kwargs):
        calls[input_path.rsplit("/", 1)[-1].removesuffix(".ipynb")] = parameters

    monkeypatch.setattr(papermill, "execute_notebook", execute_notebook)
    return calls


def test_reproduce_passes_interactive_false_where_declared(tmp_path, handed):
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    _notebook(nbs / "00_static.ipynb", 'profile = "smoke"\nseed = 0')
    _notebook(nbs / "01_widgets.ipynb", 'profile = "smoke"\nseed = 0\ninteractive = True')
    assert main(["reproduce", "--notebooks", str(nbs), "--results-root", str(tmp_path / "r"),
                 "--seed", "3", "--no-progress"]) == 0
    common = {"profile": "smoke", "device": "auto", "data_root": "", "seed": 3,
              "results_root": str((tmp_path / "r").resolve())}
    assert handed == {"00_static": common, "01_widgets": {**common, "interactive": False}}


def test_paper_notebooks_declare_interactive_and_run_without_it(tmp_path, handed):
    notebooks = reproduce.discover()
    for paper in INTERACTIVE_NOTEBOOKS:
        declared = papermill.inspect_notebook(str(notebooks[paper]))
        assert declared["interactive"]["default"] == "True", paper  # sliders for a user
        run = reproduce.run_notebook(paper, notebooks[paper], profile="smoke",
                                     results_root=tmp_path, parameters={"seed": 0},
                                     timeout=None, progress=False)
        assert run.ok, run.error
        assert handed[notebooks[paper].stem] == {"seed": 0, "interactive": False}
    # a batch parameter never overrides the caller's others, and is not added where undeclared
    for paper in set(notebooks) - set(INTERACTIVE_NOTEBOOKS):
        assert reproduce.batch_parameters(notebooks[paper], {"seed": 1}) == {"seed": 1}
