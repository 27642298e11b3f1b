"""glimpse.report: byte-stable, atomic writes; summary; compare; index; notebook cleaning."""

from __future__ import annotations

import dataclasses
import json

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import nbformat  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from glimpse import io as glimpse_io  # noqa: E402
from glimpse import report  # noqa: E402
from glimpse.cli import main  # noqa: E402
from glimpse.report import Reporter  # noqa: E402


def _table() -> pd.DataFrame:
    return pd.DataFrame({"model": ["b", "a", "c"], "AP": [37.25, 1 / 3, np.nan],
                         "iters": [1, 2, 3]})


def _figure():
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1, 2], [1, 0, 1])
    ax.set_title("t")
    return fig


def _files(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_table_files_and_format(tmp_path):
    rep = Reporter("demo", profile="smoke", root=tmp_path)
    out = rep.table("t1", _table(), float_digits=2)
    csv = (tmp_path / "demo/smoke/tables/t1.csv").read_text()
    assert csv == "model,AP,iters\nb,37.25,1\na,0.33,2\nc,,3\n"
    md = (tmp_path / "demo/smoke/tables/t1.md").read_text()
    assert md.splitlines() == ["| model | AP | iters |", "|---|---:|---:|",
                               "| b | 37.25 | 1 |", "| a | 0.33 | 2 |", "| c |  | 3 |"]
    assert md.endswith("|\n")
    # the returned table is the rounded one, for display
    assert out["AP"].tolist()[:2] == [37.25, 0.33]


def test_table_sort_and_per_column_digits_and_escape(tmp_path):
    rep = Reporter("demo", profile="smoke", root=tmp_path)
    df = pd.DataFrame({"name": ["x|y", "a"], "v": [1.23456, -0.0001], "w": [2.5, 3.25]})
    rep.table("t", df, float_digits={"v": 1, "*": 2}, sort_by="name")
    csv = (tmp_path / "demo/smoke/tables/t.csv").read_text()
    # "-0.0" is written as "0.0"; sorting is by name
    assert csv == "name,v,w\na,0.0,3.25\nx|y,1.2,2.50\n"
    md = (tmp_path / "demo/smoke/tables/t.md").read_text()
    assert "x\\|y" in md


def test_byte_stable_rewrites(tmp_path):
    roots = []
    for run in range(2):
        root = tmp_path / f"run{run}"
        rep = Reporter("demo", profile="smoke", root=root, config={"a": 1})
        rep.table("t1", _table())
        fig = _figure()
        rep.figure("f1", fig, svg=True)
        plt.close(fig)
        rep.finalize()
        roots.append(root)
    a, b = _files(roots[0]), _files(roots[1])
    assert sorted(a) == sorted(b)
    for name in a:
        if name.endswith("manifest.json"):
            continue
        assert a[name] == b[name], name
    assert a["demo/smoke/figures/f1.png"].startswith(b"\x89PNG")
    assert b"Software" not in a["demo/smoke/figures/f1.png"]


def test_rewrite_same_folder_is_identical(tmp_path):
    rep = Reporter("demo", profile="smoke", root=tmp_path)
    rep.table("t1", _table())
    fig = _figure()
    rep.figure("f1", fig)
    first = _files(tmp_path / "demo/smoke")
    rep.table("t1", _table())
    rep.figure("f1", fig)
    plt.close(fig)
    assert _files(tmp_path / "demo/smoke") == first


def test_atomic_write_failure_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "x.txt"
    glimpse_io.atomic_write(path, "old\n")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(glimpse_io.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        glimpse_io.atomic_write(path, "new\n")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_failing_figure_leaves_old_png(tmp_path):
    rep = Reporter("demo", profile="smoke", root=tmp_path)
    fig = _figure()
    png = rep.figure("f", fig)
    before = png.read_bytes()

    class Broken:
        def savefig(self, *args, **kwargs):
            raise RuntimeError("render failed")

    with pytest.raises(RuntimeError):
        rep.figure("f", Broken())
    plt.close(fig)
    assert png.read_bytes() == before
    assert sorted(p.name for p in png.parent.iterdir()) == ["f.png"]


def test_no_temp_files_after_writes(tmp_path):
    rep = Reporter("demo", profile="smoke", root=tmp_path)
    rep.table("t", _table())
    rep.finalize()
    leftovers = [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
    # permissions follow the umask, not mkstemp's 0600
    mode = (tmp_path / "demo/smoke/tables/t.csv").stat().st_mode & 0o777
    assert mode == 0o666 & ~glimpse_io._UMASK


def test_summary_is_rounded_sorted_and_free_of_timestamps(tmp_path):
    rep = Reporter("demo", profile="smoke", root=tmp_path, seed=3)
    rep.scalar("zeta", 1 / 3)
    rep.scalar("alpha", 2.0, digits=1)
    rep.scalar("count", 7)
    rep.scalar("ap", 0.123456, in_summary=False)
    rep.table("b_table", _table())
    rep.table("a_table", _table().head(1))
    assert rep.summary() == "\n".join([
        "demo / smoke (seed 3)",
        "scalar alpha = 2.0",
        "scalar count = 7",
        "scalar zeta = 0.333",
        "table a_table: 1 rows x 3 cols",
        "table b_table: 3 rows x 3 cols",
    ])


@dataclasses.dataclass(frozen=True)
class _Cfg:
    iters: int = 5
    scale: tuple[int, int] = (128, 128)


def test_manifest_contents(tmp_path):
    rep = Reporter("demo", profile="smoke", root=tmp_path, config=_Cfg(), data="synthetic", seed=1)
    rep.table("t", _table())
    rep.scalar("n", 3)
    path = rep.finalize()
    m = json.loads(path.read_text())
    assert m["config"] == {"iters": 5, "scale": [128, 128]}
    assert m["profile"] == "smoke" and m["paper"] == "demo" and m["seed"] == 1
    assert m["data"] == "synthetic" and m["tables"] == ["tables/t.csv"]
    env = m["environment"]
    for key in ("git_sha", "git_dirty", "python", "torch", "torchvision", "numpy", "cuda",
                "device_name", "glimpse_kernels"):
        assert key in env
    assert m["duration_s"] >= 0 and "start_time" in m
    assert (tmp_path / "README.md").is_file()


def test_bad_names_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="paper"):
        Reporter("a/b", profile="smoke", root=tmp_path)
    with pytest.raises(ValueError, match="reserved"):
        Reporter("demo", profile="paper", root=tmp_path)
    rep = Reporter("demo", profile="smoke", root=tmp_path)
    with pytest.raises(ValueError, match="artefact name"):
        rep.table("../x", _table())
    with pytest.raises(TypeError, match="DataFrame"):
        rep.table("x", [1, 2])


def test_default_root_is_repo_results():
    root = report.default_root()
    assert root.name == "results"
    assert (root.parent / "pyproject.toml").is_file()
    assert report._resolve_root("") == root


def test_compare_and_paper_csv(tmp_path):
    paper_dir = tmp_path / "demo" / "paper"
    paper_dir.mkdir(parents=True)
    (paper_dir / "t.csv").write_text("model,AP,source\nfaster,36.4,Table 1\nmask,37.3,Table 1\n")
    rep = Reporter("demo", profile="smoke", root=tmp_path)
    measured = pd.DataFrame({"model": ["mask", "faster", "retina"], "AP": [30.0, 36.0, 20.0]})
    out = rep.compare("t", measured, on="model")
    assert list(out.columns) == ["model", "AP_paper", "AP_glimpse", "AP_delta", "profile", "source"]
    assert out["model"].tolist() == ["faster", "mask", "retina"]
    assert out["AP_delta"].tolist()[:2] == pytest.approx([-0.4, -7.3])
    assert np.isnan(out["AP_paper"].iloc[2]) and np.isnan(out["AP_delta"].iloc[2])
    assert set(out["profile"]) == {"smoke"}

    (paper_dir / "nosource.csv").write_text("model,AP\nx,1\n")
    with pytest.raises(ValueError, match="source"):
        report.load_paper("demo", "nosource", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        report.load_paper("demo", "missing", root=tmp_path)
    with pytest.raises(KeyError, match="key column"):
        report.compare(report.load_paper("demo", "t", root=tmp_path), measured, on="name",
                       profile="smoke")


def test_write_bench(tmp_path):
    df = pd.DataFrame({"op": ["carafe"], "ms": [1.23456], "ratio": [2.0]})
    path = report.write_bench("ops", df, root=tmp_path, machine={"threads": 1, "device": "cpu"})
    assert path == tmp_path / "bench" / "ops.csv"
    assert path.read_text() == "op,ms,ratio\ncarafe,1.235,2.000\n"
    md = (tmp_path / "bench" / "ops.md").read_text()
    assert md.startswith("Machine: device: cpu, threads: 1\n\n| op |")
    assert json.loads((tmp_path / "bench" / "ops.json").read_text()) == {"device": "cpu",
                                                                        "threads": 1}


def test_write_index(tmp_path):
    (tmp_path / "demo" / "paper").mkdir(parents=True)
    (tmp_path / "demo" / "paper" / "t.csv").write_text("a,source\n1,x\n")
    (tmp_path / "demo" / "runs").mkdir()
    (tmp_path / "demo" / "runs" / "00_demo_smoke.ipynb").write_text("{}")
    for profile in ("full", "smoke"):
        rep = Reporter("demo", profile=profile, root=tmp_path)
        rep.table("t", _table())
        rep.finalize(index=False)
    rep = Reporter("alpha", profile="smoke", root=tmp_path)
    fig = _figure()
    rep.figure("f", fig)
    plt.close(fig)
    report.write_bench("b", _table(), root=tmp_path)
    path = report.write_index(tmp_path)
    text = path.read_text()
    assert text.endswith("\n") and "runs" not in text
    lines = text.splitlines()
    assert lines.index("## alpha") < lines.index("## demo") < lines.index("## bench")
    f_png = "alpha/smoke/figures/f.png"
    assert f"| figure | f | [{f_png}]({f_png}) | smoke |  |" in lines
    demo_rows = [ln for ln in lines if ln.startswith("| ") and "demo/" in ln]
    assert [r.split(" | ")[3] for r in demo_rows] == ["paper", "smoke", "full"]
    assert "[manifest](demo/smoke/manifest.json)" in demo_rows[1]
    # regenerating gives the same bytes
    before = path.read_bytes()
    assert report.write_index(tmp_path).read_bytes() == before


def _papermill_like_notebook(path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.metadata["papermill"] = {"duration": 1.5, "start_time": "2026-01-01T00:00:00"}
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    params = nbformat.v4.new_code_cell('profile = "smoke"', metadata={"tags": ["parameters"]})
    injected = nbformat.v4.new_code_cell('profile = "cpu"',
                                         metadata={"tags": ["injected-parameters"]})
    code = nbformat.v4.new_code_cell("1 + 1", execution_count=3)
    code.metadata["execution"] = {"iopub.status.busy": "2026-01-01T00:00:00"}
    code.metadata["papermill"] = {"duration": 0.1, "status": "completed"}
    code.metadata["ExecuteTime"] = {"end_time": "2026"}
    code.outputs = [
        nbformat.v4.new_output("execute_result", data={"text/plain": "2"}, execution_count=3),
        nbformat.v4.new_output("display_data", data={
            "application/vnd.jupyter.widget-view+json": {"model_id": "abc"}}),
        nbformat.v4.new_output("display_data", data={
            "application/vnd.jupyter.widget-view+json": {"model_id": "abc"},
            "text/plain": "progress"}),
    ]
    nb.cells = [nbformat.v4.new_markdown_cell("# t"), params, injected, code]
    nbformat.write(nb, path)


def test_clean_notebooks(tmp_path, capsys):
    path = tmp_path / "nb.ipynb"
    _papermill_like_notebook(path)
    assert main(["clean-notebooks", str(path)]) == 0
    nb = nbformat.read(path, as_version=4)
    assert "papermill" not in nb.metadata and "widgets" not in nb.metadata
    assert nb.metadata.kernelspec.name == "python3"
    assert [c.source for c in nb.cells] == ["# t", 'profile = "smoke"', "1 + 1"]
    # execution counts renumbered over the code cells (the injected cell is gone)
    assert [c.get("execution_count") for c in nb.cells] == [None, 1, 2]
    code = nb.cells[2]
    assert set(code.metadata) == set()
    assert [o.get("execution_count") for o in code.outputs] == [2, None]
    assert code.outputs[0].data["text/plain"] == "2"
    assert code.outputs[1].data == {"text/plain": "progress"}
    nbformat.validate(nb)
    text = path.read_text()
    assert "papermill" not in text and "ExecuteTime" not in text and text.endswith("\n")
    # idempotent
    assert main(["clean-notebooks", str(path)]) == 0
    assert path.read_text() == text
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]


def test_clean_notebooks_errors(tmp_path, capsys):
    bad = tmp_path / "bad.ipynb"
    bad.write_text("{not json")
    assert main(["clean-notebooks", str(tmp_path / "missing.ipynb"), str(bad)]) == 1
    err = capsys.readouterr().err
    assert "missing.ipynb: no such file" in err and "bad.ipynb: not a readable notebook" in err
    assert len(err.strip().splitlines()) == 2 and "Traceback" not in err
    assert bad.read_text() == "{not json"
    with pytest.raises(ValueError, match="bad.ipynb: not a readable notebook"):
        report.clean_notebook_file(bad)
    with pytest.raises(FileNotFoundError, match="missing.ipynb"):
        report.clean_notebook_file(tmp_path / "missing.ipynb")
