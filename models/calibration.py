"""AdaDec's per-model entropy threshold: fitting it, and keeping it with the model.

The threshold is where a logistic regression of "the greedy token was the real next token" on
the next-token entropy crosses one half, with both outcomes weighted equally (the AdaDec
paper balances them by down-sampling; weights do the same without throwing data away). Below
it greedy is more likely right than wrong and decoding goes on; above it, it pauses.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nextab.models.resolve import cache_dir

FORMAT = "nextab.adadec-calibration/1"


@dataclass(frozen=True)
class ThresholdFit:
    threshold: float  # nats: above it, greedy is more likely wrong than right
    coefficient: float  # of entropy in the log-odds of greedy being right (negative)
    intercept: float
    balanced_accuracy: float  # of the rule "greedy is right iff entropy <= threshold"
    samples: int
    greedy_right: float  # share of steps where greedy was right


def fit_threshold(entropies: np.ndarray, correct: np.ndarray, iterations: int = 100) -> ThresholdFit:
    """Logistic regression of `correct` on `entropies` (Newton's method, balanced weights)."""
    x = np.asarray(entropies, dtype=np.float64).ravel()
    y = np.asarray(correct, dtype=bool).ravel()
    keep = np.isfinite(x)
    x, y = x[keep], y[keep]
    right, wrong = int(y.sum()), int((~y).sum())
    if right == 0 or wrong == 0:
        raise ValueError(
            f"calibration needs steps where greedy was right and wrong ({right} right, "
            f"{wrong} wrong)"
        )
    weights = np.where(y, 0.5 / right, 0.5 / wrong)
    features = np.stack([np.ones_like(x), x], axis=1)
    beta = np.zeros(2)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(features @ beta)))
        gradient = features.T @ (weights * (y - p))
        # A whisker of ridge keeps the step finite when the classes separate perfectly.
        hessian = (features * (weights * p * (1 - p))[:, None]).T @ features + 1e-9 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        beta += step
        if float(np.abs(step).max()) < 1e-10:
            break
    intercept, coefficient = float(beta[0]), float(beta[1])
    threshold = -intercept / coefficient if coefficient < 0 else math.inf
    below = x <= threshold
    balanced = 0.5 * (float(below[y].mean()) + float((~below[~y]).mean()))
    return ThresholdFit(threshold, coefficient, intercept, balanced, int(x.size), right / x.size)


# -- kept with the model ----------------------------------------------------------------------


def model_identity(model_path: Path) -> str:
    """What the calibration depends on: the model's config and its weight files."""
    digest = hashlib.sha256(str(model_path.resolve()).encode())
    config = model_path / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    for weights in sorted(model_path.glob("*.safetensors")) + sorted(model_path.glob("*.bin")):
        stat = weights.stat()
        digest.update(f"{weights.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def calibration_path(model_path: Path, name: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")[:60] or "model"
    return cache_dir() / "calibration" / f"{slug}-{model_identity(model_path)}.json"


def save_calibration(model_path: Path, name: str, fit: ThresholdFit, details: dict[str, Any]) -> Path:
    path = calibration_path(model_path, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "format": FORMAT,
        "model": name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **asdict(fit),
        **details,
    }
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".calibration-")
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        json.dump(record, out, indent=1)
    os.replace(temporary, path)
    return path


def load_threshold(model_path: Path, name: str) -> float | None:
    """The learned threshold for this model, or None if it was never calibrated (or the
    record is unreadable: calibrating again fixes that)."""
    path = calibration_path(model_path, name)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None
    value = record.get("threshold") if record.get("format") == FORMAT else None
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None
