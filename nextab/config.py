"""The one typed configuration, read from LSP options, CLI flags and the environment.

Keys are camelCase on the wire (LSP settings) and snake_case in Python. An invalid value never
fails the whole load: it yields one message naming the key, what is allowed and the default
that is used instead.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any, Literal, get_args, get_origin, get_type_hints

import cattrs
import cattrs.errors

from nextab.context.repository import SOURCES
from nextab.context.secrets import compile_exclude


@dataclass(frozen=True)
class CompletionConfig:
    max_lines: int = 12  # multi-line suggestions stop after this many lines
    prefix_chars: int = 6000  # how much of the file before the cursor the prompt may hold
    suffix_chars: int = 1200  # and after it
    # The FIM split sits at the start of a line on a grid of this many lines (0: at the cursor),
    # so typing appends to the prompt instead of moving the suffix: see context/window.py.
    middle_lines: int = 8
    multiline: Literal["auto", "always", "never"] = "auto"


@dataclass(frozen=True)
class ContextConfig:
    """Repository material in the prompt: what is gathered, and how it is cut to a budget."""

    # "longcodezip" compresses the candidates with the model as scorer, "bm25" keeps the best by
    # BM25 alone, "full" keeps them in rank order, "none" shows the current file only; "auto"
    # is bm25, which LongCodeZip did not beat at the same budget (benchmarks/README.md).
    strategy: Literal["auto", "longcodezip", "bm25", "full", "none"] = "auto"
    pool_tokens: int = 4096  # candidates gathered before compression
    # Repository material that reaches the prompt: 512 won more cross-file tasks than 1024 at
    # two thirds of the pre-fill (benchmarks/README.md, crossfile.py).
    budget_tokens: int = 512
    # Unified diffs of the latest edits: in next-edit prompts, and in completion prompts with
    # the "edits" source.
    recent_edits_chars: int = 1200
    # Where candidates come from, in rank order (context/repository.py, SOURCES): "api" (what
    # the call or attribute at the cursor refers to), "definitions" (of names near the cursor),
    # "newImports" (imported, not used yet), "edited" and "viewed" (lately, in other files),
    # "similar" (BM25 over function-level chunks), "imports" (the other imported names), "edits"
    # (diffs of the latest edits). Not "edits" by default: while typing (bench accept) the diffs
    # cost acceptance and ~15 % of keystroke latency on both packages (benchmarks/README.md).
    sources: tuple[str, ...] = ("api", "definitions", "newImports", "edited", "viewed", "similar", "imports")
    index: bool = True  # index the workspace (definitions, imports, similar code)
    watch: bool = True  # follow changes made outside the editor
    # Keep the index and the edit history in the user cache across restarts; off, a session
    # starts from nothing and leaves nothing (benchmarks, throw-away workspaces).
    persist: bool = True
    max_files: int = 20_000
    max_file_bytes: int = 1_000_000
    history_edits: int = 200  # edits kept per workspace, across restarts
    edit_pause_ms: int = 1500  # a pause this long ends an edit
    # Files never indexed, recorded or shown to the model, on top of the secret names and the
    # git-ignored files that never are (context/secrets.py): gitignore-style globs relative to
    # the workspace root, e.g. ["config/prod/", "*.sql"].
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class AdaDecConfig:
    """AdaDec decoding, and the k that beam search shares with it."""

    # Next-token entropy (nats) above which a step pauses to look ahead; null: the threshold
    # `nextab calibrate` learned for the model (greedy, with a warning, until there is one).
    threshold: float | None = None
    top_k: int = 3  # candidates compared at a pause; beam search's width
    lookahead: int = 5  # greedy tokens rolled out after each candidate
    # Who scores the candidates at a pause: the model itself, or the large model of two-model
    # decoding (`largeModel`), teacher-forced over the small model's lookahead.
    scorer: Literal["self", "large"] = "self"


@dataclass(frozen=True)
class PairConfig:
    """The large model of two-model decoding, beside the one that serves every keystroke."""

    # Documents whose large-model cache is kept (each a prompt's worth of its attention cache).
    cached_documents: int = 2
    # The most tokens the large model may compute before a request's answer, catching its
    # cache up with the document; beyond it the small model answers alone, and the large one
    # catches up once the model is idle. A keystroke is a token or two; a document the large
    # model has not read is its whole prompt (a minute for 1.5k tokens of the 1.5B on a 2-core
    # CPU). null: no limit.
    catch_up_tokens: int | None = 32


@dataclass(frozen=True)
class SpeculativeConfig:
    """Speculative decoding: the small model drafts, the large model checks each draft."""

    max_draft: int = 8  # tokens per draft at most; 0: the large model decodes alone
    # Stop drafting once the chance that the large model refuses a drafted token passes this
    # (SpecDec++'s rule, the draft model's own confidence as each token's chance).
    stop_threshold: float = 0.3


@dataclass(frozen=True)
class EadConfig:
    """Entropy-adaptive switching: the small model decodes, the large one where it is unsure."""

    # Mean next-token entropy (nats) over the last `window` tokens above which the large model
    # decides. 0.5: with the embedded pair, the 1.5B's pass@1 on HumanEval single-line at
    # 0.57x its warm latency (docs/architecture.md, "Two-model decoding"). null: the pair's threshold from
    # `nextab calibrate --large`, else the small model decodes alone (with a warning).
    threshold: float | None = 0.5
    window: int = 3
    min_run: int = 2  # tokens a model decides in a row before the other may take over


@dataclass(frozen=True)
class NextEditConfig:
    """Next-edit suggestions (`nextab/nextEdit`): where the next edit is, and what it is."""

    enabled: bool = True  # serve nextab/nextEdit and push suggestions after an edit pause
    repeat: bool = True  # the repeat-edit proposer (no model: renames, repeated changes)
    model_step: bool = True  # the model's edit step where the proposer has no edit
    max_locations: int = 8  # candidate locations kept per request
    # Rank the candidate lines with the learned location ranker (nextab/location_ranker.py,
    # trained on mined commits); off, they keep the structural order of context/locations.py.
    ranker: bool = True
    # Answer nothing where the ranker's calibrated confidence that its first line is the one
    # edited next is below this: a wrong suggestion costs the user more than none.
    min_score: float = 0.0
    # Rank the candidates by the model's likelihood that the window changes (1 - the
    # probability of copying it unchanged) before rewriting the best: one scoring pass per
    # candidate, so "auto" ranks on a GPU and keeps the structural order on a CPU.
    rank_with_model: Literal["auto", "on", "off"] = "auto"
    # The model that ranks the locations, when not the edit model (the NES paper's dual-model
    # set-up): a model spec as `model` takes; "" ranks with the edit model.
    location_model: str = ""
    model_locations: int = 2  # of which the model rewrites at most this many (each costs a pass)
    window_lines: int = 5  # the editable region around a location
    excerpt_lines: int = 15  # code shown on each side of the region
    extra_tokens: int = 48  # the rewrite may be this many tokens longer than the region
    max_suggestions: int = 3
    # Push `nextab/nextEditSuggestion` after an edit and a pause in typing (for editors that
    # show it; off by default, since a client that ignores it would only pay for the work).
    push: bool = False
    push_delay_ms: int = 600


@dataclass(frozen=True)
class Config:
    model: str = "embedded"  # "embedded", a model directory, a .gguf file or a hub id
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:N", "mps"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # The runtime: "onnx" runs an onnxruntime export of the model (made once by
    # `nextab model export`), "torch" runs it in transformers, "split" pre-fills long prompts
    # in torch and decodes in onnxruntime over one cache; "auto" picks per device, as
    # measured (benchmarks/README.md, "Backends").
    backend: Literal["auto", "torch", "onnx", "split"] = "auto"
    # Weights of the onnxruntime export; "auto" is int8 on a CPU and fp16 on CUDA.
    precision: Literal["auto", "int4", "int8", "fp16", "fp32"] = "auto"
    max_tokens: int = 64
    # "speculative" gives the large model's output (`largeModel`), drafted by `model`.
    # "ead" has the large model decide where the small one is unsure (see EadConfig).
    decoding: Literal["greedy", "adadec", "beam", "speculative", "ead"] = "greedy"
    # The large model of two-model strategies: a model spec as `model` takes, sharing its
    # vocabulary; loaded only when `decoding` needs it.
    large_model: str = "qwen2.5-coder-1.5b"
    # "auto" reads the family off the model's vocabulary.
    fim_template: Literal["auto", "qwen2.5-coder", "starcoder", "deepseek-coder", "codellama", "codestral"] = "auto"
    debounce_ms: int = 0  # server-side wait before computing, on top of the editor's own
    cached_documents: int = 4  # documents whose prompt KV cache is kept
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Keep what editors report of shown suggestions (accepted, dismissed...) in a local log
    # that `nextab stats` reads; nothing leaves the machine.
    acceptance_log: bool = True
    completion: CompletionConfig = field(default_factory=CompletionConfig)
    context: ContextConfig = field(default_factory=ContextConfig)
    adadec: AdaDecConfig = field(default_factory=AdaDecConfig)
    next_edit: NextEditConfig = field(default_factory=NextEditConfig)
    pair: PairConfig = field(default_factory=PairConfig)
    speculative: SpeculativeConfig = field(default_factory=SpeculativeConfig)
    ead: EadConfig = field(default_factory=EadConfig)

    @property
    def needs_large(self) -> bool:
        """Whether the decoding strategy runs a second, larger model."""
        two = self.decoding in ("speculative", "ead") or (
            self.decoding == "adadec" and self.adadec.scorer == "large"
        )
        return two and bool(self.large_model.strip())


# Integer settings and their inclusive ranges.
_RANGES: dict[str, tuple[int, int]] = {
    "max_tokens": (1, 4096),
    "debounce_ms": (0, 10_000),
    "cached_documents": (1, 256),
    "max_lines": (1, 200),
    "prefix_chars": (0, 1_000_000),
    "suffix_chars": (0, 1_000_000),
    "middle_lines": (0, 1000),
    "pool_tokens": (0, 131_072),
    "budget_tokens": (0, 131_072),
    "recent_edits_chars": (0, 100_000),
    "max_files": (0, 1_000_000),
    "max_file_bytes": (1, 100_000_000),
    "history_edits": (0, 100_000),
    "edit_pause_ms": (0, 600_000),
    "top_k": (1, 32),
    "lookahead": (1, 64),
    "max_locations": (1, 100),
    "model_locations": (0, 32),
    "window_lines": (1, 60),
    "excerpt_lines": (0, 500),
    "extra_tokens": (0, 1024),
    "max_suggestions": (1, 50),
    "push_delay_ms": (0, 60_000),
    "max_draft": (0, 32),
    "window": (1, 32),
    "min_run": (1, 64),
    "catch_up_tokens": (1, 1_000_000),
}
_CHECKS: dict[str, Callable[[Any], bool]] = {
    **{name: (lambda v, lo=lo, hi=hi: lo <= v <= hi) for name, (lo, hi) in _RANGES.items()},
    "device": lambda v: bool(re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v)),
    "model": lambda v: bool(v.strip()),
    "threshold": lambda v: v is None or 0.0 <= v <= 20.0,
    "stop_threshold": lambda v: 0.0 < v < 1.0,
    "min_score": lambda v: 0.0 <= v <= 1.0,
    "catch_up_tokens": lambda v: v is None or 1 <= v <= 1_000_000,
    "exclude": lambda v: _valid_patterns(v),
    "sources": lambda v: _known_sources(v),
}
_ALLOWED_TEXT = {
    **{name: f"an integer from {lo} to {hi}" for name, (lo, hi) in _RANGES.items()},
    "device": '"auto", "cpu", "mps", "cuda" or "cuda:N"',
    "model": "a non-empty model name or path",
    "threshold": "a number of nats from 0 to 20, or null for the model's learned threshold",
    "exclude": "a list of gitignore-style patterns",
    "sources": "a list of distinct names from " + ", ".join(f'"{s}"' for s in SOURCES),
    "stop_threshold": "a number between 0 and 1 (exclusive)",
    "catch_up_tokens": "an integer from 1 to 1000000, or null for no limit",
}

_converter = cattrs.Converter(forbid_extra_keys=True)


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _allowed(name: str, hint: Any) -> str:
    if name in _ALLOWED_TEXT:
        return _ALLOWED_TEXT[name]
    if get_origin(hint) is Literal:
        return " or ".join(f'"{a}"' for a in get_args(hint))
    return getattr(hint, "__name__", str(hint))


def _structure_value(name: str, hint: Any, value: Any) -> Any:
    if hint is int:
        value = _integer(value)
    elif hint == float | None:
        value = None if value is None or value == "null" else _number(value)
    elif hint == int | None:
        value = None if value is None or value == "null" else _integer(value)
    elif hint is float:
        value = _number(value)
    elif hint is bool:
        value = _boolean(value)
    elif hint is str and not isinstance(value, str):
        raise TypeError("not a string")
    elif hint == tuple[str, ...]:
        value = _strings(value)
    result = _converter.structure(value, hint)
    check = _CHECKS.get(name)
    if check is not None and not check(result):
        raise ValueError("out of range")
    return result


_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


def _boolean(value: Any) -> bool:
    # Strings come from the environment and CLI; anything else must already be a JSON boolean.
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise TypeError("not a boolean")


def _strings(value: Any) -> tuple[str, ...]:
    # The environment and CLI give a string: a JSON list, or items separated by commas.
    if isinstance(value, str):
        text = value.strip()
        value = json.loads(text) if text.startswith("[") else [p.strip() for p in text.split(",")]
        value = [p for p in value if p != ""] if isinstance(value, list) else value
    if not isinstance(value, list | tuple) or not all(isinstance(p, str) for p in value):
        raise TypeError("not a list of strings")
    return tuple(value)


def _valid_patterns(patterns: tuple[str, ...]) -> bool:
    compile_exclude(patterns)  # a pattern git would refuse is refused here, not at first use
    return True


def _known_sources(sources: tuple[str, ...]) -> bool:
    return all(s in SOURCES for s in sources) and len(set(sources)) == len(sources)


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError("a boolean is not a number")
    number = float(value.strip()) if isinstance(value, str) else value
    if not isinstance(number, int | float) or number != number or abs(number) == float("inf"):
        raise ValueError("not a finite number")
    return float(number)


def _integer(value: Any) -> int:
    # JSON has one number type: 3.0 is an integer, 3.5 and true are not.
    if isinstance(value, bool):
        raise TypeError("a boolean is not an integer")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError("not an integer")
    if isinstance(value, str):
        return int(value.strip())
    if not isinstance(value, int | float):
        raise TypeError("not a number")
    return int(value)


def _build(cls: type, raw: Mapping[str, Any], path: str, errors: list[str]) -> Any:
    """Structure `raw` into `cls` one key at a time, so one bad key costs only itself."""
    hints = get_type_hints(cls)
    known = {camel(f.name): f for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        f = known.get(key) or next((g for g in fields(cls) if g.name == key), None)
        if f is None:
            errors.append(f"nextab: unknown setting '{path}{key}' ignored")
            continue
        hint = hints[f.name]
        if is_dataclass(hint):
            if isinstance(value, Mapping):
                values[f.name] = _build(hint, value, f"{path}{camel(f.name)}.", errors)
            else:
                errors.append(f"nextab: setting '{path}{camel(f.name)}' must be an object; using defaults")
            continue
        try:
            values[f.name] = _structure_value(f.name, hint, value)
        except (ValueError, TypeError, cattrs.errors.CattrsError):
            default = getattr(cls(), f.name)
            errors.append(
                f"nextab: invalid value {value!r} for '{path}{camel(f.name)}' "
                f"(expected {_allowed(f.name, hint)}); using the default {default!r}"
            )
    return cls(**values)


def load(raw: Mapping[str, Any] | None, base: Config | None = None) -> tuple[Config, list[str]]:
    """A Config from a settings mapping layered over `base`; returns it and the messages."""
    errors: list[str] = []
    if raw is None:
        return base or Config(), errors
    if not isinstance(raw, Mapping):
        return base or Config(), [f"nextab: settings must be an object, got {type(raw).__name__}"]
    # Clients nest server settings under the server's name (VS Code's section, didChange...).
    if "nextab" in raw and isinstance(raw["nextab"], Mapping):
        raw = raw["nextab"]
    built = _build(Config, raw, "", errors)
    if base is None:
        return built, errors
    return _overlay(base, built, raw), errors


def _overlay(base: Any, built: Any, raw: Mapping[str, Any]) -> Any:
    """Take from `built` only the keys that `raw` actually set."""
    changes: dict[str, Any] = {}
    for f in fields(base):
        key = camel(f.name) if camel(f.name) in raw else f.name
        if key not in raw:
            continue
        value = getattr(built, f.name)
        if is_dataclass(value) and isinstance(raw[key], Mapping):
            value = _overlay(getattr(base, f.name), value, raw[key])
        changes[f.name] = value
    return replace(base, **changes)


def from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Settings from NEXTAB_* variables: NEXTAB_MAX_TOKENS=32, NEXTAB_COMPLETION__MAX_LINES=4."""
    environ = os.environ if environ is None else environ
    settings: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith("NEXTAB_") or name in _NOT_SETTINGS:
            continue
        parts = [camel(p.lower()) for p in name.removeprefix("NEXTAB_").split("__")]
        node: Any = settings
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break  # a plain value already claims this section: load() reports it
        else:
            node[parts[-1]] = value
    return settings


# Environment variables of nextab that are not settings.
_NOT_SETTINGS = frozenset({"NEXTAB_CACHE_DIR", "NEXTAB_DATA_DIR"})


def to_settings(config: Config) -> dict[str, Any]:
    """The config as camelCase settings (what `nextab config` prints, what clients send)."""

    def convert(value: Any) -> Any:
        if is_dataclass(value):
            return {camel(f.name): convert(getattr(value, f.name)) for f in fields(value)}
        return value

    return convert(config)
