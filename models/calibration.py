"""AdaDec's per-model entropy threshold: fitting it, and keeping it with the model.

As in the AdaDec paper: a logistic regression of "the greedy token was the real next token" on
the next-token entropy is fitted with both outcomes weighted equally (the paper down-samples;
weights do the same without throwing data away), then the probability cut that classifies
held-out steps best (at their natural mix, where greedy is mostly right) is turned back into
an entropy. Balancing alone would put the cut where greedy is merely less sure than usual and
pause far too often; the held-out cut lands where greedy is about as likely wrong as right.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nextab.models.resolve import cache_dir
from nextab.storage import CHECKSUM_FIELD, quarantine, seal, unseal, write_atomic

FORMAT = "nextab.adadec-calibration/3"  # 3: checksummed (nextab.storage.seal)
UNCHECKED_FORMAT = "nextab.adadec-calibration/2"  # the same record without a checksum
PAIR_FORMAT = "nextab.ead-calibration/1"  # EAD's threshold for a pair of models, checksummed


@dataclass(frozen=True)
class ThresholdFit:
    threshold: float  # nats: above it, AdaDec pauses
    boundary: float  # nats: where the balanced regression crosses one half
    coefficient: float  # of entropy in the log-odds of greedy being right (negative)
    intercept: float
    probability_cut: float  # the balanced model's probability at `threshold`
    accuracy: float  # held out, of the rule "greedy is right iff entropy <= threshold"
    balanced_accuracy: float  # held out, the same rule
    samples: int
    greedy_right: float  # share of steps where greedy was right


HELD_OUT = 0.2
CUTS = np.round(np.arange(0.01, 1.0, 0.01), 2)  # the paper's grid of probability cuts


def fit_threshold(
    entropies: np.ndarray, correct: np.ndarray, seed: int = 0, held_out: float = HELD_OUT
) -> ThresholdFit:
    x = np.asarray(entropies, dtype=np.float64).ravel()
    y = np.asarray(correct, dtype=bool).ravel()
    keep = np.isfinite(x)
    x, y = x[keep], y[keep]
    right, wrong = int(y.sum()), int((~y).sum())
    if right < 2 or wrong < 2:
        raise ValueError(
            f"calibration needs steps where greedy was right and wrong ({right} right, "
            f"{wrong} wrong)"
        )
    test = _held_out(y, held_out, seed)
    intercept, coefficient = _balanced_logistic(x[~test], y[~test])
    if coefficient >= 0:  # entropy does not predict mistakes: never pause
        return ThresholdFit(
            math.inf, math.inf, coefficient, intercept, 0.0, float(y[test].mean()), 0.5,
            int(x.size), right / x.size,
        )
    boundary = -intercept / coefficient
    probability = 1.0 / (1.0 + np.exp(-(intercept + coefficient * x[test])))
    accuracies = [float(((probability >= cut) == y[test]).mean()) for cut in CUTS]
    cut = float(CUTS[int(np.argmax(accuracies))])  # the first of equals, as the paper's scan
    threshold = (math.log(cut / (1 - cut)) - intercept) / coefficient
    below = x[test] <= threshold
    truth = y[test]
    balanced = 0.5 * (float(below[truth].mean()) + float((~below[~truth]).mean()))
    return ThresholdFit(
        threshold, boundary, coefficient, intercept, cut, max(accuracies), balanced,
        int(x.size), right / x.size,
    )


def _held_out(y: np.ndarray, share: float, seed: int) -> np.ndarray:
    """A random `share` of the steps, stratified so that both sides keep both outcomes."""
    rng = np.random.default_rng(seed)
    test = np.zeros(y.size, dtype=bool)
    for label in (True, False):
        where = np.flatnonzero(y == label)
        count = min(len(where) - 1, max(1, round(share * len(where))))
        test[rng.choice(where, size=count, replace=False)] = True
    return test


def _balanced_logistic(x: np.ndarray, y: np.ndarray, iterations: int = 100) -> tuple[float, float]:
    """Intercept and slope of a logistic regression of y on x, both classes weighted alike
    (Newton's method)."""
    weights = np.where(y, 0.5 / y.sum(), 0.5 / (~y).sum())
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
    return float(beta[0]), float(beta[1])


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


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")[:60] or "model"


def calibration_path(model_path: Path, name: str) -> Path:
    return cache_dir() / "calibration" / f"{_slug(name)}-{model_identity(model_path)}.json"


def pair_calibration_path(small: tuple[Path, str], large: tuple[Path, str]) -> Path:
    """Where EAD's threshold for a (model path, name) pair is kept: changing either model
    makes it another pair."""
    identity = hashlib.sha256(f"{model_identity(small[0])}+{model_identity(large[0])}".encode())
    slug = f"{_slug(small[1])[:40]}+{_slug(large[1])[:40]}"
    return cache_dir() / "calibration" / f"{slug}-{identity.hexdigest()[:16]}.json"


def save_calibration(model_path: Path, name: str, fit: ThresholdFit, details: dict[str, Any]) -> Path:
    return _save(calibration_path(model_path, name), FORMAT, name, fit, details)


def save_pair_calibration(
    small: tuple[Path, str], large: tuple[Path, str], fit: ThresholdFit, details: dict[str, Any]
) -> Path:
    path = pair_calibration_path(small, large)
    return _save(path, PAIR_FORMAT, f"{small[1]} + {large[1]}", fit, details)


def _save(path: Path, form: str, name: str, fit: ThresholdFit, details: dict[str, Any]) -> Path:
    record = {
        "format": form,
        "model": name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **asdict(fit),
        **details,
    }
    write_atomic(path, json.dumps(seal(record), indent=1).encode())
    return path


def load_threshold(model_path: Path, name: str) -> float | None:
    """The learned threshold for this model, or None if it was never calibrated (or the
    record is damaged: it is moved aside with a warning, and calibrating again fixes that)."""
    return _load(calibration_path(model_path, name), FORMAT, UNCHECKED_FORMAT)


def load_pair_threshold(small: tuple[Path, str], large: tuple[Path, str]) -> float | None:
    """EAD's learned threshold for the pair, None as load_threshold."""
    return _load(pair_calibration_path(small, large), PAIR_FORMAT, None)


def _load(path: Path, form: str, unchecked: str | None) -> float | None:
    try:
        text = path.read_bytes()
    except OSError:  # missing (never calibrated) or unreadable
        return None
    try:
        checked = _checked(json.loads(text), form, unchecked)
    except ValueError as error:
        quarantine(path, f"corrupt ({error})", what="calibration", then="not using it")
        return None
    if checked is None:
        return None  # another format: calibrating again replaces it
    value = checked.get("threshold")
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _checked(record: Any, form: str, unchecked: str | None) -> dict[str, Any] | None:
    """The record if this version reads it, None if it is of another format; ValueError if it
    is damaged. The checksum is checked first, so that damage to the format is damage too."""
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    if CHECKSUM_FIELD in record:
        checked = unseal(record)
        if checked is None:
            raise ValueError("its checksum does not match")
        return checked if checked.get("format") == form else None
    if record.get("format") == form:
        raise ValueError("its checksum is missing")
    return record if unchecked is not None and record.get("format") == unchecked else None
