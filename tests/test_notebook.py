"""The Colab notebook runs headlessly (nbclient), in its offline test mode, so it cannot rot."""

import os
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

from tests.test_train import needs_fmnist

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "colab_quickstart.ipynb"


@pytest.mark.slow  # a kernel running every stage; tests/test_pipeline.py covers the stages
@needs_fmnist
def test_colab_quickstart_runs_offline(tmp_path, monkeypatch):
    workdir = tmp_path / "nb_run"
    monkeypatch.setenv("MNV2_TF_NOTEBOOK_TEST", "1")
    monkeypatch.setenv("MNV2_TF_NOTEBOOK_WORKDIR", str(workdir))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    )
    client.execute()
    outputs = [
        out.get("text", "") + str(out.get("data", {}).get("text/markdown", ""))
        for cell in notebook.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
    ]
    text = "\n".join(outputs)
    assert f"workdir: {workdir}" in text
    assert "model_int8.tflite" in text  # the report's table, shown inline
    assert (workdir / "export" / "model_int8.tflite").exists()
    images = [
        out for cell in notebook.cells for out in cell.get("outputs", [])
        if "image/png" in out.get("data", {})
    ]  # fmt: skip
    # training curves, trade-off, the detector's and the segmenter's eval images
    assert len(images) == 4
    det = pathlib.Path(str(workdir) + "_detection")
    assert (det / "export" / "model_int8.tflite").exists() and (det / "examples.png").exists()
    assert "mAP TFLite" in text
    seg = pathlib.Path(str(workdir) + "_segmentation")
    assert (seg / "export" / "model_int8.tflite").exists() and (seg / "examples.png").exists()
    assert "mIOU TFLite" in text


def test_notebook_is_valid_and_has_no_stored_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")
    assert os.path.getsize(NOTEBOOK) < 50_000
