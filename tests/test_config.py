"""nextab/config.py: one typed Config from LSP settings, CLI flags and the environment."""

from __future__ import annotations

import dataclasses

import pytest

from nextab.config import CompletionConfig, Config, camel, from_env, load, to_settings


def test_defaults():
    config = Config()
    assert config.model == "embedded"
    assert config.device == "auto"
    assert config.dtype == "auto"
    assert config.max_tokens == 64
    assert config.decoding == "greedy"
    assert config.fim_template == "auto"
    assert config.debounce_ms == 0
    assert config.cached_documents == 4
    assert config.log_level == "info"
    assert config.completion == CompletionConfig()
    assert config.completion.max_lines == 12
    assert config.completion.multiline == "auto"


@pytest.mark.parametrize("raw", [None, {}])
def test_nothing_given_gives_defaults(raw):
    assert load(raw) == (Config(), [])


def test_camel():
    assert camel("max_tokens") == "maxTokens"
    assert camel("cached_documents") == "cachedDocuments"
    assert camel("model") == "model"


def test_camel_case_keys():
    config, errors = load(
        {
            "maxTokens": 32,
            "debounceMs": 50,
            "logLevel": "debug",
            "device": "cuda:1",
            "completion": {"maxLines": 3, "multiline": "never", "prefixChars": 100},
        }
    )
    assert errors == []
    assert config.max_tokens == 32
    assert config.debounce_ms == 50
    assert config.log_level == "debug"
    assert config.device == "cuda:1"
    assert config.completion == CompletionConfig(max_lines=3, prefix_chars=100, multiline="never")


def test_snake_case_keys_accepted_too():
    config, errors = load({"max_tokens": 16, "completion": {"max_lines": 5, "suffix_chars": 7}})
    assert errors == []
    assert config.max_tokens == 16
    assert config.completion.max_lines == 5
    assert config.completion.suffix_chars == 7


def test_invalid_value_one_message_default_used_other_keys_apply():
    config, errors = load({"maxTokens": 0, "debounceMs": 25, "completion": {"maxLines": 2}})
    assert len(errors) == 1
    message = errors[0]
    assert "maxTokens" in message
    assert "1 to 4096" in message  # what is allowed
    assert "64" in message  # the default used instead
    assert config.max_tokens == 64
    assert config.debounce_ms == 25
    assert config.completion.max_lines == 2


def test_invalid_nested_value_names_the_dotted_key():
    config, errors = load({"completion": {"maxLines": 1000, "suffixChars": 10}})
    assert len(errors) == 1
    assert "completion.maxLines" in errors[0]
    assert "1 to 200" in errors[0]
    assert "12" in errors[0]
    assert config.completion.max_lines == 12
    assert config.completion.suffix_chars == 10


def test_invalid_device():
    config, errors = load({"device": "tpu", "maxTokens": 8})
    assert len(errors) == 1
    assert "device" in errors[0]
    assert '"cuda:N"' in errors[0]
    assert config.device == "auto"
    assert config.max_tokens == 8


@pytest.mark.parametrize(
    ("raw", "key", "allowed", "default"),
    [
        ({"logLevel": "verbose"}, "logLevel", '"debug"', "'info'"),
        ({"dtype": "int8"}, "dtype", '"bfloat16"', "'auto'"),
        ({"decoding": "nucleus"}, "decoding", '"adadec"', "'greedy'"),
        ({"completion": {"multiline": "sometimes"}}, "completion.multiline", '"never"', "'auto'"),
    ],
)
def test_invalid_literal_value_is_reported_not_raised(raw, key, allowed, default):
    config, errors = load({**raw, "maxTokens": 9})
    assert len(errors) == 1
    assert key in errors[0] and allowed in errors[0] and default in errors[0]
    assert config.max_tokens == 9


@pytest.mark.parametrize("value", [True, False])
def test_booleans_rejected_for_ints(value):
    config, errors = load({"maxTokens": value})
    assert len(errors) == 1
    assert "maxTokens" in errors[0]
    assert config.max_tokens == 64


def test_non_integral_number_rejected_for_ints():
    config, errors = load({"maxTokens": 3.5})
    assert len(errors) == 1
    assert config.max_tokens == 64


def test_numeric_strings_accepted_for_ints():
    # Environment variables are strings: " 32 " must read as 32.
    config, errors = load({"maxTokens": " 32 "})
    assert errors == []
    assert config.max_tokens == 32


def test_non_numeric_string_rejected_for_ints():
    config, errors = load({"maxTokens": "many"})
    assert len(errors) == 1
    assert "'many'" in errors[0]
    assert config.max_tokens == 64


def test_unknown_keys_reported_and_ignored():
    config, errors = load({"maxTokens": 10, "colour": "blue", "completion": {"bogus": 1}})
    assert config.max_tokens == 10
    assert len(errors) == 2
    assert any("colour" in e and "unknown" in e for e in errors)
    assert any("completion.bogus" in e and "unknown" in e for e in errors)


def test_completion_must_be_an_object():
    config, errors = load({"completion": 5, "maxTokens": 3})
    assert len(errors) == 1
    assert "completion" in errors[0]
    assert config.completion == CompletionConfig()
    assert config.max_tokens == 3


def test_settings_must_be_a_mapping():
    config, errors = load(["maxTokens", 3])  # type: ignore[arg-type]
    assert config == Config()
    assert len(errors) == 1


def test_nested_nextab_section_unwrapped():
    config, errors = load({"nextab": {"maxTokens": 12, "completion": {"maxLines": 2}}})
    assert errors == []
    assert config.max_tokens == 12
    assert config.completion.max_lines == 2


def test_base_overlay_only_keys_present():
    base = Config(max_tokens=100, debounce_ms=30, completion=CompletionConfig(max_lines=5))
    config, errors = load({"debounceMs": 0, "completion": {"suffixChars": 10}}, base=base)
    assert errors == []
    assert config.max_tokens == 100  # not given: kept from base, not reset to the default
    assert config.debounce_ms == 0
    assert config.completion.max_lines == 5  # nested keys not given are kept too
    assert config.completion.suffix_chars == 10


def test_base_overlay_with_snake_case_and_nextab_section():
    base = Config(max_tokens=100, log_level="debug")
    config, errors = load({"nextab": {"max_tokens": 7}}, base=base)
    assert errors == []
    assert config == dataclasses.replace(base, max_tokens=7)


def test_base_overlay_with_nothing():
    base = Config(max_tokens=100)
    assert load(None, base=base) == (base, [])
    assert load({}, base=base) == (base, [])


def test_base_overlay_invalid_value_uses_the_named_default():
    base = Config(max_tokens=100, debounce_ms=30)
    config, errors = load({"maxTokens": -1}, base=base)
    assert len(errors) == 1
    assert "using the default 64" in errors[0]
    assert config.max_tokens == 64  # what the message says
    assert config.debounce_ms == 30


def test_from_env():
    settings = from_env(
        {
            "NEXTAB_MAX_TOKENS": "32",
            "NEXTAB_COMPLETION__MAX_LINES": "4",
            "NEXTAB_LOG_LEVEL": "debug",
            "NEXTAB_CACHE_DIR": "/tmp/cache",
            "PATH": "/usr/bin",
            "OTHER_NEXTAB_X": "1",
        }
    )
    assert settings == {"maxTokens": "32", "completion": {"maxLines": "4"}, "logLevel": "debug"}
    config, errors = load(settings)
    assert errors == []
    assert config.max_tokens == 32
    assert config.completion.max_lines == 4
    assert config.log_level == "debug"


def test_from_env_cache_dir_is_not_a_setting():
    settings = from_env({"NEXTAB_CACHE_DIR": "/somewhere"})
    assert settings == {}
    assert load(settings) == (Config(), [])


def test_from_env_data_dir_is_not_a_setting():
    assert from_env({"NEXTAB_DATA_DIR": "/data"}) == {}


@pytest.mark.parametrize(
    "names",
    [
        ["NEXTAB_COMPLETION", "NEXTAB_COMPLETION__MAX_LINES"],
        ["NEXTAB_COMPLETION__MAX_LINES", "NEXTAB_COMPLETION"],
    ],
    ids=["scalar-first", "nested-first"],
)
def test_from_env_scalar_and_nested_variable_for_the_same_key(names):
    environ = dict.fromkeys(names, "4")
    config, errors = load(from_env(environ))
    assert errors  # conflicting variables are reported, never a crash
    assert isinstance(config, Config)


def test_from_env_reads_os_environ(monkeypatch):
    monkeypatch.setenv("NEXTAB_DEBOUNCE_MS", "15")
    assert from_env()["debounceMs"] == "15"


def test_from_env_invalid_value_reported():
    config, errors = load(from_env({"NEXTAB_MAX_TOKENS": "lots"}))
    assert len(errors) == 1
    assert "maxTokens" in errors[0]
    assert config.max_tokens == 64


def test_to_settings_is_camel_case():
    settings = to_settings(Config())
    assert settings["maxTokens"] == 64
    assert settings["completion"]["maxLines"] == 12
    assert "max_tokens" not in settings


@pytest.mark.parametrize(
    "config",
    [
        Config(),
        Config(
            model="/models/x",
            device="cuda:0",
            dtype="bfloat16",
            max_tokens=5,
            fim_template="starcoder",
            debounce_ms=99,
            cached_documents=9,
            log_level="warning",
            completion=CompletionConfig(
                max_lines=3, prefix_chars=10, suffix_chars=20, multiline="always"
            ),
        ),
    ],
)
def test_to_settings_round_trip(config):
    assert load(to_settings(config)) == (config, [])
    # And over an unrelated base, every key is present so the base is fully replaced.
    assert load(to_settings(config), base=Config(max_tokens=1000)) == (config, [])


@pytest.mark.parametrize(("value", "expected"), [(True, True), (False, False), ("off", False), ("1", True)])
def test_booleans_from_json_and_environment_strings(value, expected):
    config, messages = load({"context": {"watch": value}})
    assert messages == []
    assert config.context.watch is expected


@pytest.mark.parametrize("value", [1, "maybe", None, [True]])
def test_non_booleans_rejected_for_booleans(value):
    config, messages = load({"context": {"index": value, "budgetTokens": 768}})
    assert config.context.index is True
    assert config.context.budget_tokens == 768
    assert len(messages) == 1 and "'context.index'" in messages[0] and "default True" in messages[0]


def test_context_section_from_env():
    settings = from_env({"NEXTAB_CONTEXT__STRATEGY": "bm25", "NEXTAB_CONTEXT__WATCH": "false"})
    config, messages = load(settings)
    assert messages == []
    assert config.context.strategy == "bm25" and config.context.watch is False


def test_adadec_settings() -> None:
    config, errors = load({"decoding": "adadec", "adadec": {"threshold": 1.25, "topK": 4}})
    assert errors == []
    assert config.decoding == "adadec"
    assert (config.adadec.threshold, config.adadec.top_k, config.adadec.lookahead) == (1.25, 4, 5)
    assert load({"adadec": {"threshold": "0.5"}})[0].adadec.threshold == 0.5  # env, CLI
    assert load({"adadec": {"threshold": None}})[0].adadec.threshold is None


@pytest.mark.parametrize("bad", [True, "high", -1, 21, float("nan"), "inf", [1]])
def test_invalid_adadec_threshold_names_the_key_and_the_default(bad) -> None:
    config, errors = load({"adadec": {"threshold": bad}})
    assert len(errors) == 1 and "'adadec.threshold'" in errors[0] and "None" in errors[0]
    assert "nats" in errors[0]
    assert config.adadec.threshold is None


def test_adadec_from_the_environment() -> None:
    raw = from_env({"NEXTAB_DECODING": "beam", "NEXTAB_ADADEC__TOP_K": "2"})
    config, errors = load(raw)
    assert errors == [] and config.decoding == "beam" and config.adadec.top_k == 2


@pytest.mark.parametrize(
    ("argv", "level"),
    [
        (["serve"], "info"),
        (["--log-level", "debug", "serve"], "debug"),
        # Editors pass the arguments after the subcommand (VS Code's nextab.serverArgs).
        (["serve", "--log-level", "debug"], "debug"),
        (["--log-level", "error", "model", "fetch", "--log-level", "warning"], "warning"),
    ],
)
def test_log_level_before_or_after_the_subcommand(argv, level):
    from nextab.cli import make_parser

    assert make_parser().parse_args(argv).log_level == level
