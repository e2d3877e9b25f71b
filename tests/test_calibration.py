"""AdaDec's threshold: the fit (models/calibration.py) and the data (nextab/calibrate.py)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest

from nextab.calibrate import cut_spans, library_files, observe
from nextab.config import AdaDecConfig, Config, EadConfig
from nextab.engine import Engine
from nextab.models.calibration import (
    calibration_path,
    fit_threshold,
    load_threshold,
    save_calibration,
)
from nextab.models.decoding import AdaDecDecoder


def test_threshold_of_two_gaussians() -> None:
    # Equal variances: the log-odds are exactly linear in entropy. Weighted alike, the classes'
    # regression crosses one half halfway between the means (1.5 nats); the cut that classifies
    # steps best at their real 3:1 mix is where the true log-odds, log 3 - 4 (x - 1.5), reach
    # zero: 1.5 + log(3) / 4 = 1.775 nats.
    rng = np.random.default_rng(0)
    right = rng.normal(1.0, 0.5, 30_000)
    wrong = rng.normal(2.0, 0.5, 10_000)
    fit = fit_threshold(np.concatenate([right, wrong]), np.r_[np.ones(30_000), np.zeros(10_000)])
    assert fit.boundary == pytest.approx(1.5, abs=0.03)
    assert fit.threshold == pytest.approx(1.5 + math.log(3) / 4, abs=0.05)
    # Slope of the true log-odds: (mu_wrong - mu_right) / sigma^2 = 4 per nat.
    assert fit.coefficient == pytest.approx(-4.0, rel=0.05)
    assert fit.probability_cut == pytest.approx(0.25, abs=0.03)  # 1 - the share greedy gets right
    assert fit.samples == 40_000 and fit.greedy_right == pytest.approx(0.75)
    # Right steps fall below 1.775 with probability Phi(1.55) = 0.939, wrong ones above it with
    # Phi(0.45) = 0.674: 0.75 * 0.939 + 0.25 * 0.674 = 0.873.
    assert fit.accuracy == pytest.approx(0.873, abs=0.01)


def test_a_rarer_mistake_moves_the_threshold_up() -> None:
    rng = np.random.default_rng(1)
    fits = []
    for wrong_count in (20_000, 2_000):
        entropies = np.r_[rng.normal(1.0, 0.5, 20_000), rng.normal(2.0, 0.5, wrong_count)]
        fits.append(fit_threshold(entropies, np.r_[np.ones(20_000), np.zeros(wrong_count)]))
    even, rare = fits
    assert even.threshold == pytest.approx(1.5, abs=0.05)
    assert rare.threshold == pytest.approx(1.5 + math.log(10) / 4, abs=0.06)


def test_separable_classes_get_a_threshold_between_them() -> None:
    entropies = np.r_[np.linspace(0.0, 0.9, 50), np.linspace(2.1, 3.0, 50)]
    fit = fit_threshold(entropies, np.r_[np.ones(50, bool), np.zeros(50, bool)])
    assert 0.9 < fit.threshold < 2.1 and fit.balanced_accuracy == 1.0 and fit.accuracy == 1.0


def test_entropy_that_does_not_predict_mistakes_never_pauses() -> None:
    rng = np.random.default_rng(2)
    entropies = rng.uniform(0, 3, 4_000)
    fit = fit_threshold(entropies, entropies > 1.5)  # greedy is wrong when *sure*
    assert fit.threshold == math.inf


def test_one_sided_data_cannot_be_fitted() -> None:
    with pytest.raises(ValueError, match="right and wrong"):
        fit_threshold(np.array([0.1, 0.5, math.nan]), np.array([True, True, False]))


def test_calibration_is_kept_per_model_and_dropped_when_it_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("NEXTAB_CACHE_DIR", str(tmp_path / "cache"))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "qwen2"}')
    (model / "model.safetensors").write_bytes(b"weights")
    assert load_threshold(model, "m") is None
    fit = fit_threshold(np.r_[np.zeros(5), np.ones(5) * 3], np.r_[np.ones(5), np.zeros(5)])
    saved = save_calibration(model, "m", fit, {"spans": 2})
    assert saved == calibration_path(model, "m") and saved.is_relative_to(tmp_path / "cache")
    assert load_threshold(model, "m") == pytest.approx(fit.threshold)
    assert json.loads(saved.read_text())["spans"] == 2
    # New weights are a new model: its threshold is unknown until calibrated again.
    (model / "model.safetensors").write_bytes(b"other weights")
    assert load_threshold(model, "m") is None
    # A damaged record reads as "not calibrated", not as an error.
    damaged = calibration_path(model, "m")
    damaged.parent.mkdir(parents=True, exist_ok=True)
    damaged.write_text("{not json")
    assert load_threshold(model, "m") is None


def test_spans_come_from_real_library_code_and_put_back_give_the_source() -> None:
    files = library_files()
    assert len(files) > 100
    spans = cut_spans(files, 12, seed=3)
    assert len(spans) == 12 and len({s.path for s in spans}) == 12
    for span in spans:
        assert span.target.strip() and not span.target[0].isspace()
        assert 1 <= span.target.count("\n") + 1 <= 4
        whole = span.text[: span.offset] + span.target + span.text[span.offset :]
        source = (library_files_root() / span.path).read_text(encoding="utf-8")
        assert whole in source and whole.count("\n") >= 10
        assert not span.path.startswith(("test/", "idlelib/"))
    assert cut_spans(files, 12, seed=3) == spans  # seeded: the same spans every time


def library_files_root():
    import sysconfig
    from pathlib import Path

    return Path(sysconfig.get_paths()["stdlib"])


def test_observations_cover_every_target_token(tiny_backend) -> None:
    engine = Engine(Config(max_tokens=4), tiny_backend)
    spans = cut_spans(library_files(), 3, seed=1)
    seen = observe(engine, spans)
    assert seen.entropies.shape == seen.good.shape
    assert len(seen.entropies) >= sum(len(tiny_backend.tokenize(s.target)) for s in spans) - 3
    assert (seen.entropies >= 0).all() and seen.good.dtype == bool


def test_the_engine_uses_the_learned_threshold_unless_one_is_set(tiny_backend, caplog) -> None:
    learned = Engine(Config(decoding="adadec"), tiny_backend, learned_threshold=1.75)
    assert isinstance(learned.decoder, AdaDecDecoder) and learned.decoder.threshold == 1.75
    chosen = Engine(
        Config(decoding="adadec", adadec=AdaDecConfig(threshold=0.5, top_k=2)),
        tiny_backend,
        learned_threshold=1.75,
    )
    assert (chosen.decoder.threshold, chosen.decoder.top_k) == (0.5, 2)
    with caplog.at_level(logging.WARNING):
        unknown = Engine(Config(decoding="adadec"), tiny_backend)
    assert unknown.decoder.threshold == math.inf  # greedy until calibrated
    assert "nextab calibrate" in caplog.text


def test_rolling_mean_is_eads_statistic() -> None:
    from nextab.calibrate import rolling_mean

    values = np.array([3.0, 0.0, 0.0, 6.0, 0.0])
    assert rolling_mean(values, 3).tolist() == pytest.approx([3.0, 1.5, 1.0, 2.0, 2.0])
    assert rolling_mean(values, 1).tolist() == values.tolist()


def test_pair_observations_label_where_the_two_models_agree(tiny_backend) -> None:
    from nextab.calibrate import observe_pair, rolling_mean
    from nextab.models.torch_backend import TorchBackend
    from tests.tiny import lively_model

    tokenizer = tiny_backend.tokenizer
    other = TorchBackend(lively_model(len(tokenizer), tokenizer.eos_token_id, seed=3), tokenizer, "other", "cpu")
    engine = Engine(Config(max_tokens=4), tiny_backend)
    spans = cut_spans(library_files(), 3, seed=1)
    with_itself = observe_pair(engine, tiny_backend, spans, window=3)
    assert with_itself.good.all() and len(with_itself.good) >= 3
    alone = observe(engine, spans)
    assert len(with_itself.entropies) == len(alone.entropies)
    # The window restarts at each span: its first steps are the plain entropies' mean so far.
    assert with_itself.entropies[:2].tolist() == pytest.approx(rolling_mean(alone.entropies[:2], 3).tolist(), abs=1e-5)
    with_other = observe_pair(engine, other, spans, window=1)
    assert with_other.entropies.tolist() == pytest.approx(alone.entropies.tolist(), abs=1e-5)
    # The labels, recomputed for the first span from two plain full-sequence forwards.
    import torch

    from nextab.calibrate import _teacher_forced

    prompt, target = _teacher_forced(engine, spans[0])
    with torch.inference_mode():
        ids = torch.tensor([[*prompt, *target]])
        picks = [m.model(ids).logits[0, len(prompt) - 1 : -1].argmax(-1) for m in (tiny_backend, other)]
    expected = (picks[0] == picks[1]).numpy()
    assert with_other.good[: len(target)].tolist() == expected.tolist()
    assert with_itself.good.all() and not with_other.good.all()


def test_pair_calibration_is_kept_per_pair_and_dropped_when_either_changes(tmp_path, monkeypatch) -> None:
    from nextab.models.calibration import (
        load_pair_threshold,
        pair_calibration_path,
        save_pair_calibration,
    )

    monkeypatch.setenv("NEXTAB_CACHE_DIR", str(tmp_path / "cache"))
    models = []
    for name in ("small", "large"):
        model = tmp_path / name
        model.mkdir()
        (model / "config.json").write_text('{"model_type": "qwen2"}')
        (model / "model.safetensors").write_bytes(name.encode())
        models.append((model, name))
    small, large = models
    assert load_pair_threshold(small, large) is None
    fit = fit_threshold(np.r_[np.zeros(5), np.ones(5) * 3], np.r_[np.ones(5), np.zeros(5)])
    saved = save_pair_calibration(small, large, fit, {"window": 3})
    assert saved == pair_calibration_path(small, large) and saved != calibration_path(*small)
    assert load_pair_threshold(small, large) == pytest.approx(fit.threshold)
    assert load_threshold(*small) is None  # AdaDec's record is another one
    assert load_pair_threshold(large, small) is None  # the order matters: who drafts, who decides
    (large[0] / "model.safetensors").write_bytes(b"retrained")
    assert load_pair_threshold(small, large) is None


def test_the_engine_uses_the_pairs_learned_switch_threshold(tiny_backend, tmp_path, monkeypatch, caplog) -> None:
    from nextab.models.calibration import save_pair_calibration

    monkeypatch.setenv("NEXTAB_CACHE_DIR", str(tmp_path / "cache"))
    paths = []
    for name in ("small", "large"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(name)
        paths.append(tmp_path / name)
    fit = fit_threshold(np.r_[np.zeros(5), np.ones(5) * 3], np.r_[np.ones(5), np.zeros(5)])
    name = tiny_backend.info.name
    save_pair_calibration((paths[0], name), (paths[1], name), fit, {})
    learned = Config(decoding="ead", ead=EadConfig(threshold=None))  # the pair's own, if learned
    engine = Engine(learned, tiny_backend, model_path=paths[0], large=tiny_backend)
    assert engine.decoder.threshold == math.inf and "nextab calibrate --large" in caplog.text
    engine.large_path = paths[1]
    engine.reconfigure(learned)
    assert engine.decoder.threshold == pytest.approx(fit.threshold)
    engine.reconfigure(Config(decoding="ead", ead=EadConfig(threshold=0.25)))
    assert engine.decoder.threshold == 0.25


def test_nextab_calibrate_large_learns_the_pairs_threshold_the_engine_then_uses(
    tiny_model_dir, tmp_path, monkeypatch, capsys
) -> None:
    from nextab.cli import main
    from tests.tiny import build_model_dir

    monkeypatch.setenv("NEXTAB_CACHE_DIR", str(tmp_path / "cache"))
    # A large model of the same vocabulary and other weights, a little livelier: the two
    # agree on most steps (both mostly repeat the last token), not on all (~88% here).
    large = build_model_dir(tmp_path / "large", seed=7, initializer_range=0.05)
    argv = ["calibrate", "--model", str(tiny_model_dir), "--backend", "torch", "--device", "cpu",
            "--spans", "6", "--large", str(large)]  # fmt: skip
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert Path(printed["saved"]).is_file() and printed["window"] == 3
    assert 0 < printed["greedy_right"] < 1  # the share of steps where the two agreed
    config = Config(model=str(tiny_model_dir), backend="torch", device="cpu", decoding="ead", large_model=str(large),
                    ead=EadConfig(threshold=None))
    engine = Engine.load(config, progress=False)
    assert engine.large is not None
    assert engine.decoder.threshold == pytest.approx(printed["threshold"])
