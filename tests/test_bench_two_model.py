"""benchmarks/two_model_table.py: the variants, every variant on every task of a primed
document with a tiny random-weight pair, the replay's server options, and the merged table."""

from __future__ import annotations

import json

import pytest

from nextab.config import AdaDecConfig, CompletionConfig, Config, PairConfig
from nextab.engine import Engine
from nextab.models.torch_backend import TorchBackend
from tests.scripts import load_benchmark

bench = load_benchmark("two_model_table.py", "bench_two_model")
fh = bench.fh

TASKS = [
    fh.Task("T/0", "def double(x):\n    return ", "\n", "x * 2", "def check(f):\n    assert f(2) == 4\n", "double"),
    fh.Task("T/1", "def inc(x):\n    y = x + 1\n    return ", "\n", "y", "def check(f):\n    assert f(1) == 2\n", "inc"),
]


def test_variants_default_to_all_in_table_order_and_take_any_ead_threshold() -> None:
    names = [v.name for v in bench.variants(None, [0.5, 2.0])]
    assert names == ["small", "small-adadec", "large", "speculative", "ead-2", "ead-0.5", "adadec-large"]
    chosen = bench.variants(["ead-0.7", "small"], [])
    assert [(v.name, v.decoding, v.settings) for v in chosen] == [
        ("small", "greedy", {}), ("ead-0.7", "ead", {"ead": {"threshold": 0.7}})
    ]  # fmt: skip
    with pytest.raises(SystemExit, match="unknown variant 'medium'"):
        bench.variants(["medium"], [])
    with pytest.raises(SystemExit, match="ead- takes a threshold"):
        bench.variants(["ead-high"], [])


def test_the_keystroke_before_the_hole_is_enter_at_a_new_line_else_the_last_character() -> None:
    assert bench.keystroke_cut("def f(x):\n    ") == len("def f(x):")
    assert bench.keystroke_cut("def f(x):\n") == len("def f(x):")
    assert bench.keystroke_cut("    return x +") == len("    return x ")
    assert bench.keystroke_cut("") == 0


def test_every_variant_completes_every_task_on_the_primed_document(tiny_backend, monkeypatch) -> None:
    from tests.tiny import lively_model

    measured = fh.complete_in

    def complete_in(engine, task, document, *args):
        # No suggestion left to type ahead in: the measured keystroke is the model's to answer.
        assert document.given is None
        return measured(engine, task, document, *args)

    monkeypatch.setattr(fh, "complete_in", complete_in)

    tokenizer = tiny_backend.tokenizer
    eos = tokenizer.eos_token_id
    small = TorchBackend(lively_model(len(tokenizer), eos, seed=2), tokenizer, "small", "cpu")
    large = TorchBackend(lively_model(len(tokenizer), eos, seed=1), tokenizer, "large", "cpu")
    config = Config(
        decoding="speculative", max_tokens=6, completion=CompletionConfig(middle_lines=0),
        pair=PairConfig(catch_up_tokens=None), adadec=AdaDecConfig(threshold=0.5),
    )  # fmt: skip
    engine = Engine(config, small, large=large)
    chosen = bench.variants(["small", "large", "speculative", "ead-0", "adadec-large"], [])
    results, prime_ms = bench.run_humaneval(engine, TASKS, chosen, "line", None, workers=1)
    assert len(prime_ms) == len(TASKS) and [r.decoding for r in results] == [v.name for v in chosen] * 2
    by = {(r.task_id, r.decoding): r for r in results}
    for task in TASKS:
        # The 1.5B alone, speculative decoding and EAD at threshold 0 all write the large
        # model's greedy output; the small model alone writes its own.
        large_text = by[task.task_id, "large"].completion
        assert by[task.task_id, "speculative"].completion == large_text
        assert by[task.task_id, "ead-0"].completion == large_text
        assert by[task.task_id, "small"].large_tokens == 0
        assert by[task.task_id, "large"].large_tokens == by[task.task_id, "large"].generated_tokens > 0
        # Primed one keystroke back: every variant paid the keystroke's few tokens (the model's
        # own answer, not the typed-ahead rest of the priming one), not the prompt.
        for v in chosen:
            r = by[task.task_id, v.name]
            assert 1 <= r.prompt_tokens - r.reused_tokens <= 4 and r.fallback == "", r
        assert all(by[task.task_id, v.name].check in ("pass", "fail", "timeout") for v in chosen)
    # The engine is left as it was, the large model still loaded.
    assert engine.config == config and engine.large is large


def test_the_replay_runs_one_server_per_variant_with_its_strategy_and_settings(tmp_path) -> None:
    args = bench.parse_args(["replay", "--variants", "small", "ead-1", "--positions", "2",
                             "--settings", '{"maxTokens": 16}', "--out", str(tmp_path / "r.json")])  # fmt: skip
    argv = bench.replay_argv(args, bench.variants(args.variants, args.ead))
    configs = dict(argv[i + 1].split("=", 1) for i, word in enumerate(argv) if word == "--config")
    assert json.loads(configs["small"]) == {
        "maxTokens": 16, "largeModel": "qwen2.5-coder-1.5b", "backend": "onnx", "decoding": "greedy"
    }  # fmt: skip
    assert json.loads(configs["ead-1"])["ead"] == {"threshold": 1.0}
    assert "--no-peer" in argv and argv[argv.index("--settle") + 1] == "60.0"
    assert argv[argv.index("--out") + 1] == str(tmp_path / "r.requests.jsonl")


def _summary(em: float, passed: float, p50: float, share: float) -> dict:
    latency = {"p50": p50, "p95": 2 * p50}
    return {"exact_match": em, "pass_at_1": passed, "latency_ms": latency, "decoding": {"large_share": share}}


def test_the_table_merges_humaneval_and_the_replay(tmp_path) -> None:
    humaneval = {
        "summary": {
            "benchmark": "two_model_table.humaneval", "set": "single", "n": 50,
            "by_variant": {"small": _summary(0.4, 0.6, 300, 0), "large": _summary(0.6, 0.8, 900, 1)},
        }
    }  # fmt: skip
    warm = {"fresh_latency_ms": {"p50": 200.0, "p95": 400.0}}
    replay = {
        "benchmark": "two_model_table.replay",
        "configs": {
            "small": {"summary": {"warm_single": warm}, "server": {"large_share": 0.0}},
            "large": {"summary": {"warm_single": {"fresh_latency_ms": {"p50": 500.0, "p95": 900.0}}},
                      "server": {"large_share": 0.75}},
        },
    }  # fmt: skip
    paths = []
    for name, data in (("h.json", humaneval), ("r.json", replay)):
        paths.append(tmp_path / name)
        paths[-1].write_text(json.dumps(data))
    table = bench.table_main(bench.parse_args(["table", *map(str, paths)])).splitlines()
    assert table[0].startswith("| variant | single (50) EM | single (50) pass@1 |")
    assert table[2] == "| small | 0.400 | 0.600 | 300 | 600 | 1.00 | 0.00 | 200 | 400 | 1.00 | 0.00 |"
    assert table[3] == "| large | 0.600 | 0.800 | 900 | 1800 | 3.00 | 1.00 | 500 | 900 | 2.50 | 0.75 |"
