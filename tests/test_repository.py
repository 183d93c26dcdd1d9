"""Repository-wide rules: Keras 2 is selected in one place, entry points fail cleanly."""

import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_legacy_keras_is_set_in_exactly_one_place():
    assignments = []
    for path in ROOT.rglob("*.py"):
        if any(part.startswith(".") for part in path.relative_to(ROOT).parts):
            continue
        for line in path.read_text().splitlines():
            if re.search(r"environ\[\s*['\"]TF_USE_LEGACY_KERAS['\"]\s*\]\s*=", line):
                assignments.append(path.relative_to(ROOT).as_posix())
    assert assignments == ["mnv2_tf/__init__.py"]


def test_importing_the_package_first_makes_tf_keras_keras_2():
    code = "import mnv2_tf, tensorflow as tf; print(tf.keras.__name__)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert result.stdout.strip().startswith("tf_keras.")


def test_entry_points_without_arguments_exit_non_zero_with_one_line():
    expected = {
        "train.py": "--workdir",
        "export_tflite.py": "--workdir",
        "benchmark.py": "no --model given",
    }
    # Side by side: each spends its time importing TensorFlow.
    running = {
        script: subprocess.Popen(
            [sys.executable, script],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for script in expected
    }
    for script, words in expected.items():
        _, stderr = running[script].communicate(timeout=300)
        assert running[script].returncode == 2, script
        last = stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and words in last, (script, last)
