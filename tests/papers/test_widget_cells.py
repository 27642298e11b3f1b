"""The ipywidgets cells of notebooks 02, 03 and 04, executed alone with the notebook's other
names mocked: ``interact`` runs only with ``interactive = True`` and ipywidgets importable, and
the static rendering shows either way."""

from __future__ import annotations

import importlib.machinery
import json
import sys
import types
from pathlib import Path
from unittest import mock

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def _widget_cell(notebook: str) -> str:
    cells = json.loads((NOTEBOOKS / notebook).read_text())["cells"]
    found = ["".join(c["source"]) for c in cells
             if c["cell_type"] == "code" and ".interact(" in "".join(c["source"])]
    assert len(found) == 1, notebook
    return found[0]


def _fake_ipywidgets() -> types.ModuleType:
    module = types.ModuleType("ipywidgets")
    module.__spec__ = importlib.machinery.ModuleSpec("ipywidgets", None)
    module.interact = mock.Mock()
    module.IntSlider = module.FloatLogSlider = mock.Mock()
    return module


def _names(notebook: str) -> dict:
    """The notebook's names the widget cell reads; ``static`` is its static rendering call."""
    static = mock.Mock()
    if notebook.startswith("02"):  # its static rendering is the cell above
        return {"static": static, "ga_rpn": mock.Mock(), "cfg": mock.Mock(loc_filter_thr=0.05),
                "ga": mock.Mock(), "show": mock.Mock(), "display": mock.Mock()}
    if notebook.startswith("03"):
        state = mock.Mock()
        state.kernels.shape = (1, 25, 8, 10)
        return {"static": static, "model": object(), "state": state, "carafe": mock.Mock(),
                "rep": mock.Mock(figure=static)}
    return {"static": static, "cfg": mock.Mock(dry_run=False), "show": static,
            "htc": mock.Mock(), "image": None, "internals": {"stage_boxes": [0, 1, 2]}}


@pytest.mark.parametrize("notebook", ["02_guided_anchoring.ipynb", "03_carafe.ipynb",
                                      "04_htc.ipynb"])
@pytest.mark.parametrize("interactive, installed, slider", [
    (True, True, True), (False, True, False), (True, False, False)])
def test_widget_cell(monkeypatch, capsys, notebook, interactive, installed, slider):
    widgets = _fake_ipywidgets()
    # None in sys.modules: find_spec answers None and `import ipywidgets` fails, as when absent
    monkeypatch.setitem(sys.modules, "ipywidgets", widgets if installed else None)
    names = _names(notebook)
    exec(_widget_cell(notebook), {**names, "importlib": importlib, "interactive": interactive})
    assert widgets.interact.call_count == int(slider)
    out = capsys.readouterr().out
    if not slider:
        reason = "interactive = False" if not interactive else "ipywidgets is not installed"
        assert out.startswith(reason + ": ") and out.count("\n") == 1
    static_calls = {"02": 0, "03": 1, "04": 3}[notebook[:2]]
    assert names["static"].call_count == static_calls  # the static rendering always shows
