"""What every benchmark script shares: the machine it ran on and where its JSON goes."""

from __future__ import annotations

import json
import os
import platform

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def results_path(name: str) -> str:
    """The default output: benchmarks/results/<name>.json."""
    return os.path.join(ROOT, "benchmarks", "results", f"{name}.json")


def machine() -> dict:
    import tensorflow as tf

    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
    }


def write_results(path: str, results: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=2)
    os.replace(tmp, path)
    print(f"wrote {path}")
