"""benchmarks/soak.py: several documents typed at once against the real server, measured."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.scripts import load_benchmark

soak = load_benchmark("soak.py", "bench_soak")


def test_a_short_soak_serves_every_document_and_measures_the_server(
    tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "--minutes", "0.3", "--documents", "2", "--warmup-minutes", "0.05",
        "--places", "3", "--model", str(tiny_model_dir), "--options", '{"maxTokens": 4}',
    ]  # fmt: skip
    assert soak.main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    requests = result["requests"]
    # Typing at 20 keys/s: most requests are cancelled by the next keystroke, none fails (two
    # documents of one file typed at once would desynchronise: each has its own copy).
    assert requests["sent"] == requests["answered"] + requests["cancelled"] + requests["failed"]
    assert requests["answered"] > 0 and requests["cancelled"] > 0
    assert requests["failed"] == 0, requests["errors"]
    assert result["cycles"] >= 2
    assert result["status_ms"]["n"] >= 5 and result["status_ms"]["failed"] == 0
    assert result["cancel_to_answer_ms"]["n"] == requests["cancelled"]
    assert set(result["cancel_to_stop_ms"]) == {"n", "p50", "p99", "max"}  # the server's own count
    memory = result["memory"]
    if os.path.isdir("/proc/self/fd"):
        assert memory["rss_mb_after_warmup"] > 50 and memory["open_files_end"] > 0
        # RSS is private memory plus file pages (plus shared memory, ~0 here).
        parts = memory["private_mb_after_warmup"] + memory["file_mb_after_warmup"]
        assert parts == pytest.approx(memory["rss_mb_after_warmup"], abs=5)
        assert memory["file_mb_after_warmup"] > 0 and memory["private_mb_after_warmup"] > 0
        assert memory["rss_growth_mb"] == pytest.approx(
            memory["rss_mb_end"] - memory["rss_mb_after_warmup"], abs=0.11
        )
    assert result["targets"]["no_failed_requests"] is True


def test_growth_is_measured_from_the_end_of_the_warm_up() -> None:
    run = soak.Soak(
        samples=[soak.Sample(0, 100, 5), soak.Sample(30, 300, 7), soak.Sample(90, 340, 7)]
    )
    args = type("Args", (), {"minutes": 1.5, "documents": 1, "typing_speed": 20})()
    memory = soak.summarize(run, 30, args)["memory"]
    assert memory["rss_mb_after_warmup"] == 300 and memory["rss_growth_mb"] == 40
    assert memory["rss_growth_median_mb"] == 40  # two samples: a stretch of one each
    targets = soak.summarize(run, 30, args)["targets"]
    # No RssAnon in the samples (an old kernel): the total stands in for private memory.
    assert targets["private_growth_under_50_mb"] and targets["open_files_flat"]
    run.samples.append(soak.Sample(120, 360, 9))
    targets = soak.summarize(run, 30, args)["targets"]
    assert not targets["private_growth_under_50_mb"] and not targets["open_files_flat"]


def test_the_target_reads_private_memory_and_reports_the_weights_file_pages() -> None:
    args = type("Args", (), {"minutes": 1.5, "documents": 1, "typing_speed": 20})()

    def run(private: list[float], mapped: list[float]) -> dict:
        samples = [
            soak.Sample(n * 5, a + f, 9, anon_mb=a, file_mb=f)
            for n, (a, f) in enumerate(zip(private, mapped, strict=True))
        ]
        return soak.summarize(soak.Soak(samples=samples), 5, args)

    # The model pages in embedding rows (file pages +200 MB); private memory stays flat.
    paged_in = run([1000] * 13, [100 + 20 * n for n in range(13)])
    memory = paged_in["memory"]
    assert memory["file_growth_median_mb"] >= 150 and memory["private_growth_median_mb"] == 0
    assert memory["rss_growth_median_mb"] == memory["file_growth_median_mb"]
    assert paged_in["targets"]["private_growth_under_50_mb"] is True
    assert memory["timeline"][1] == [5, 1120, 9, 1000, 120]
    # A leak: private memory grows by 120 MB while file pages stay.
    leaking = run([1000 + 10 * n for n in range(13)], [100] * 13)
    assert leaking["memory"]["private_growth_median_mb"] >= 100
    assert leaking["targets"]["private_growth_under_50_mb"] is False


def test_the_median_growth_reads_the_trend_not_the_swings() -> None:
    # Flat at 1,300 MB with a cold prompt's buffers live in every third sample.
    flat = [1300 + (100 if n % 3 == 0 else 0) for n in range(60)]
    samples = [soak.Sample(n * 5, rss, 9) for n, rss in enumerate([1000, *flat])]
    assert soak.steady_growth(samples, 5) == 0
    growing = [rss + n * 2 for n, rss in enumerate(flat)]  # +2 MB a sample: ~+100 MB
    samples = [soak.Sample(n * 5, rss, 9) for n, rss in enumerate([1000, *growing])]
    assert 90 <= soak.steady_growth(samples, 5) <= 110
    assert soak.steady_growth(samples[:2], 5) is None
