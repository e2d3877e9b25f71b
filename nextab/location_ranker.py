"""The learned next-edit location ranker: a LightGBM LambdaRank model, evaluated in numpy.

The model ranks candidate lines (`nextab.context.location_features`) by how likely the next
edit changes them; its top score, with the margin over the second, is calibrated into the
probability that the top line is right, which `nextEdit.minScore` gates. The file is LightGBM's
own text format after one header line of JSON (the calibration), so the trainer
(`training/train_location_ranker.py`) and any LightGBM can read the trees; nextab only needs
numpy to walk them: all trees at once, a level per step, a few milliseconds for a file's
candidates on one CPU core.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from nextab.context.location_features import FEATURES

log = logging.getLogger(__name__)

DEFAULT_PATH = Path(__file__).resolve().parent / "data" / "location_ranker.txt"
HEADER = "# nextab location ranker "
_ZERO = 1e-35  # LightGBM's kZeroThreshold


class RankerError(ValueError):
    """A ranker file that cannot be used (missing, damaged, or for other features)."""


@dataclass(frozen=True)
class Calibration:
    bias: float
    top: float  # weight of the top score
    margin: float  # weight of its margin over the second

    def probability(self, top: float, margin: float) -> float:
        z = self.bias + self.top * top + self.margin * margin
        return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0


@dataclass(frozen=True)
class Ranked:
    lines: tuple[int, ...]  # the candidates, best first
    scores: tuple[float, ...]
    confidence: float  # calibrated P(the first is the line the next edit changes)


class LocationRanker:
    def __init__(self, model_text: str, calibration: Calibration, trees: int,
                 tables: tuple[np.ndarray, ...], roots: np.ndarray) -> None:  # fmt: skip
        self.model_text = model_text
        self.calibration = calibration
        self.trees = trees
        (self._feature, self._threshold, self._left, self._right, self._default_left,
         self._missing, self._leaf_value) = tables  # fmt: skip
        self._roots = roots

    @classmethod
    def load(cls, path: Path = DEFAULT_PATH) -> LocationRanker:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise RankerError(f"cannot read the location ranker {path}: {error}") from None
        head, _, body = text.partition("\n")
        if not head.startswith(HEADER):
            raise RankerError(f"{path} is not a nextab location ranker (no header line)")
        try:
            calibration = Calibration(**json.loads(head[len(HEADER) :])["calibration"])
        except (ValueError, TypeError, KeyError) as error:
            raise RankerError(f"{path}: a damaged header ({error})") from None
        return cls.from_text(body, calibration)

    @classmethod
    def from_text(cls, model_text: str, calibration: Calibration) -> LocationRanker:
        """From LightGBM's text format (`Booster.model_to_string()`)."""
        fields = _header_fields(model_text)
        names = fields.get("feature_names", "").split()
        if names != list(FEATURES):
            raise RankerError(
                f"the ranker was trained on other features ({len(names)}, expected {len(FEATURES)})"
            )
        trees = _trees(model_text)
        if not trees:
            raise RankerError("the ranker has no trees")
        return cls(model_text, calibration, len(trees), *_tables(trees))

    def to_text(self) -> str:
        return HEADER + json.dumps({"calibration": asdict(self.calibration)}) + "\n" + self.model_text

    def scores(self, rows: np.ndarray) -> np.ndarray:
        """The raw score of each row (higher: the edit more likely there)."""
        x = np.asarray(rows, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(FEATURES):
            raise ValueError(f"rows must be (n, {len(FEATURES)})")
        n = x.shape[0]
        node = np.broadcast_to(self._roots, (n, self.trees)).copy()
        row_of = np.broadcast_to(np.arange(n)[:, None], node.shape)
        while True:
            active = node >= 0
            if not active.any():
                break
            at = node[active]
            value = x[row_of[active], self._feature[at]]
            missing = ((self._missing[at] == 1) & (np.abs(value) <= _ZERO)) | (
                (self._missing[at] == 2) & np.isnan(value)
            )
            left = np.where(missing, self._default_left[at], value <= self._threshold[at])
            node[active] = np.where(left, self._left[at], self._right[at])
        return self._leaf_value[-node - 1].sum(axis=1)

    def rank(self, lines: tuple[int, ...], rows: np.ndarray) -> Ranked:
        if not lines:
            return Ranked((), (), 0.0)
        scores = self.scores(rows)
        order = np.argsort(-scores, kind="stable")
        top = float(scores[order[0]])
        margin = top - float(scores[order[1]]) if len(order) > 1 else 0.0
        return Ranked(
            tuple(lines[i] for i in order),
            tuple(float(scores[i]) for i in order),
            self.calibration.probability(top, margin),
        )


def _header_fields(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in text.split("\nTree=", 1)[0].splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key] = value
    return fields


def _trees(text: str) -> list[dict[str, str]]:
    trees = []
    for block in text.split("\nTree=")[1:]:
        fields: dict[str, str] = {}
        for line in block.split("\n\n", 1)[0].splitlines()[1:]:
            key, sep, value = line.partition("=")
            if sep:
                fields[key] = value
        if "leaf_value" not in fields:
            raise RankerError("a damaged tree in the ranker")
        trees.append(fields)
    return trees


def _numbers(fields: dict[str, str], key: str, dtype: type) -> np.ndarray:
    return np.array(fields.get(key, "").split(), dtype=dtype)


def _tables(trees: list[dict[str, str]]) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """All trees' nodes in flat tables: internal nodes numbered across trees (>= 0), leaves as
    -(index + 1) into one table of leaf values, so that every tree descends in one step."""
    feature, threshold, left, right, default_left, missing, leaf_value = [], [], [], [], [], [], []
    roots = []
    internal_base = leaf_base = 0
    try:
        for fields in trees:
            leaves = _numbers(fields, "leaf_value", np.float64)
            if int(fields.get("num_cat", "0")) > 0:
                raise RankerError("categorical splits are not supported")
            if len(leaves) == 1:
                roots.append(-(leaf_base + 1))
            else:
                decision = _numbers(fields, "decision_type", np.int64)
                children = [_numbers(fields, k, np.int64) for k in ("left_child", "right_child")]
                feature.append(_numbers(fields, "split_feature", np.int64))
                threshold.append(_numbers(fields, "threshold", np.float64))
                default_left.append((decision & 2) > 0)
                missing.append((decision >> 2) & 3)
                for out, child in zip((left, right), children, strict=True):
                    out.append(np.where(child >= 0, child + internal_base, -(~child + leaf_base) - 1))
                roots.append(internal_base)
                internal_base += len(decision)
            leaf_value.append(leaves)
            leaf_base += len(leaves)
    except ValueError as error:
        raise RankerError(f"a damaged tree in the ranker ({error})") from None

    def joined(parts: list[np.ndarray], dtype: type) -> np.ndarray:
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)

    tables = (
        joined(feature, np.int64), joined(threshold, np.float64), joined(left, np.int64),
        joined(right, np.int64), joined(default_left, bool), joined(missing, np.int64),
        joined(leaf_value, np.float64),
    )  # fmt: skip
    return tables, np.array(roots, dtype=np.int64)



@functools.cache
def shipped() -> LocationRanker | None:
    """The ranker that comes with nextab, loaded once; None (said once in the log) where its
    file is missing or damaged: the candidates then keep their structural order."""
    try:
        return LocationRanker.load(DEFAULT_PATH)
    except RankerError as error:
        log.warning("next-edit locations are not ranked: %s", error)
        return None
