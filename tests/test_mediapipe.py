"""The exported models of all three tasks load and run unchanged in MediaPipe Tasks itself
(mediapipe 1.2.2 in a venv of its own, built on first use: `mediapipe_check.ensure_venv`),
and give what LiteRT gives on the same eval images."""

import pytest

from mnv2_tf.errors import UserError
from mnv2_tf.export import exporter, mediapipe_check
from tests.test_detection_task import detection_run  # noqa: F401  (session fixtures)
from tests.test_export import workdir  # noqa: F401
from tests.test_segmentation_task import segmentation_run  # noqa: F401
from tests.test_train import needs_fmnist

APP = {"modes": "float32,int8", "calibration_steps": 2, "mediapipe": True}


def exported(run, out, **settings):
    report = exporter.export(str(run), {**APP, **settings}, output_dir=str(out), log=print)
    assert all(m["mediapipe"] == "ready" for m in report["models"].values()), report["models"]
    return tuple(m["file"] for m in report["models"].values())


@pytest.mark.slow  # builds the mediapipe venv once (~1 min), then ~1 min of checks
@needs_fmnist
def test_every_task_runs_unchanged_in_mediapipe_and_agrees_with_litert(
    workdir,  # noqa: F811
    detection_run,  # noqa: F811
    segmentation_run,  # noqa: F811
    tmp_path,
):
    python = mediapipe_check.ensure_venv()
    results = {}
    # The classifier with the defaults (uint8 pixels in and out), and an int8 model with a
    # float input: its normalization (from the metadata) must land every pixel on a level.
    files = exported(workdir, tmp_path / "cls")
    results["classification"] = mediapipe_check.check(
        str(workdir), str(tmp_path / "cls"), files=files, python=python
    )
    files = exported(workdir, tmp_path / "cls_float", modes="int8", image_input="",
                     io_type="float32")  # fmt: skip
    results["float_input_int8"] = mediapipe_check.check(
        str(workdir), str(tmp_path / "cls_float"), files=files, python=python
    )
    files = exported(detection_run, tmp_path / "det", max_eval_examples=8)
    results["detection"] = mediapipe_check.check(
        str(detection_run), str(tmp_path / "det"), files=files, python=python
    )
    files = exported(segmentation_run, tmp_path / "seg", category_mask=False, max_eval_examples=4)
    results["segmentation"] = mediapipe_check.check(
        str(segmentation_run), str(tmp_path / "seg"), files=files, python=python
    )
    for name, result in results.items():
        assert result["passed"], (name, result)
        for figures in result["models"].values():
            assert figures["images"] == result["images"] > 0
    for result in (results["classification"], results["float_input_int8"]):
        for figures in result["models"].values():
            assert figures["top1_agreement"] == 1.0 and figures["images"] == 200
    for figures in results["detection"]["models"].values():
        assert figures["matched"] == figures["litert_detections"] > 0
        assert figures["max_score_difference"] <= 1e-4
    for figures in results["segmentation"]["models"].values():
        assert figures["pixel_agreement"] == 1.0


@pytest.mark.slow  # the mediapipe venv (built by the test above when run first)
def test_a_broken_model_is_a_one_line_error_from_mediapipe(tmp_path):
    """What MediaPipe says when it refuses a model reaches the user in one line."""
    broken = tmp_path / "model.tflite"
    broken.write_bytes(b"TFL3 not a model")
    with pytest.raises(UserError, match="MediaPipe refused or failed on the classification") as e:
        mediapipe_check.run_client(
            mediapipe_check.ensure_venv(), "classification", {"m": str(broken)}, []
        )
    assert "\n" not in str(e.value)
