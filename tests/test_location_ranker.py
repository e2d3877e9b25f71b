"""The next-edit location ranker: LightGBM's trees walked in numpy, and the features it reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nextab.context.edits import LineChange
from nextab.context.location_features import FEATURES, candidates
from nextab.location_ranker import DEFAULT_PATH, Calibration, LocationRanker, RankerError

lightgbm = pytest.importorskip("lightgbm")


def _trained(seed: int = 0) -> tuple[object, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(600, len(FEATURES)))
    x[rng.random(x.shape) < 0.2] = 0.0  # exact zeros, as many features are
    y = (x[:, 0] + 0.5 * x[:, 3] > 0.8).astype(float)
    booster = lightgbm.train(
        {"objective": "lambdarank", "num_leaves": 7, "min_data_in_leaf": 5, "verbose": -1},
        lightgbm.Dataset(x, y, group=[20] * 30, feature_name=list(FEATURES)),
        num_boost_round=25,
    )
    return booster, rng.normal(size=(200, len(FEATURES)))


def test_the_trees_score_as_lightgbm_does():
    booster, rows = _trained()
    rows[::7, 3] = 0.0
    ranker = LocationRanker.from_text(booster.model_to_string(), Calibration(0.0, 1.0, 0.0))
    assert np.allclose(ranker.scores(rows), booster.predict(rows), atol=1e-9)


def test_a_saved_ranker_loads_and_ranks_alike(tmp_path: Path):
    booster, rows = _trained(1)
    path = tmp_path / "ranker.txt"
    path.write_text(LocationRanker.from_text(booster.model_to_string(), Calibration(-1.0, 2.0, 0.5)).to_text())
    loaded = LocationRanker.load(path)
    assert loaded.calibration == Calibration(-1.0, 2.0, 0.5)
    ranked = loaded.rank(tuple(range(len(rows))), rows)
    assert list(ranked.scores) == sorted(ranked.scores, reverse=True)
    assert ranked.lines[0] == int(np.argmax(booster.predict(rows)))
    assert 0.0 < ranked.confidence < 1.0


def test_the_shipped_ranker_loads():
    ranker = LocationRanker.load(DEFAULT_PATH)
    assert ranker.trees > 0


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: "",  # empty
        lambda text: text.split("\n", 1)[1],  # no header line
        lambda text: text.replace('"calibration"', '"nothing"', 1),  # damaged header
        lambda text: text.replace("feature_names=distance", "feature_names=elsewhere", 1),
        lambda text: text.replace("leaf_value=", "leaf_valu=", 1),
        lambda text: text.replace("threshold=", "threshold=x ", 1),
    ],
)
def test_a_damaged_ranker_file_is_a_clear_error(tmp_path: Path, damage):
    booster, _ = _trained()
    good = LocationRanker.from_text(booster.model_to_string(), Calibration(0.0, 1.0, 0.0)).to_text()
    path = tmp_path / "ranker.txt"
    path.write_text(damage(good))
    with pytest.raises(RankerError):
        LocationRanker.load(path)


def test_no_candidates_without_an_edit_in_the_document():
    found = candidates("x = 1\ny = 2\n", [], 0)
    assert found.lines == () and found.rows.shape == (0, len(FEATURES))


def test_features_say_which_lines_use_the_name_the_last_edit_removed():
    text = "".join(f"pad_{i} = {i}\n" for i in range(80))
    text += "total = compute()\n" + "".join(f"more_{i} = {i}\n" for i in range(60)) + "print(count)\n"
    lines = text.splitlines(keepends=True)
    renamed = lines.index("total = compute()\n")
    use = lines.index("print(count)\n")
    change = LineChange("file:///a.py", renamed, "count = compute()\n", "total = compute()\n")
    found = candidates(text, [change], renamed)
    row = dict(zip(found.lines, found.rows, strict=True))
    removed = FEATURES.index("removed_names")
    # Far beyond the window around the cursor, yet a candidate: it still uses the old name.
    assert use - renamed > 40 and use in row and row[use][removed] == 1
    assert row[renamed][FEATURES.index("in_last")] == 1
    assert all(row[n][removed] == 0 for n in row if n != use)
