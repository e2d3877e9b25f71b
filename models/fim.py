"""Fill-in-the-middle prompt templates per model family, rendered straight to token ids."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from nextab.models.backend import Backend


@dataclass(frozen=True)
class ContextFile:
    """Another file shown to the model before the current one (repository-level prompt)."""

    path: str
    text: str


@dataclass(frozen=True)
class FimInput:
    """Prompt material: everything the model sees, before any family's formatting."""

    prefix: str
    suffix: str
    path: str | None = None
    repo_name: str | None = None
    context_files: tuple[ContextFile, ...] = ()
    middle: str = ""  # code between the FIM split and the cursor, which the model continues


@dataclass(frozen=True)
class FimTemplate:
    family: str
    prefix: str
    suffix: str
    middle: str | None  # None: the family generates straight after the last part (Codestral)
    order: Literal["psm", "spm"]
    stop: tuple[str, ...]
    bos: str | None = None
    repo_name: str | None = None
    file_sep: str | None = None
    # Where the current file's path goes: after the file separator ("sep"), inside the FIM
    # prefix ("in_prefix", StarCoder2's format), or as a comment line ("comment").
    path_style: Literal["sep", "in_prefix", "comment"] = "sep"

    def tokens_present(self, backend: Backend) -> bool:
        return all(
            _special(backend, t) is not None for t in (self.prefix, self.suffix, self.middle) if t
        )


QWEN = FimTemplate(
    family="qwen2.5-coder",
    prefix="<|fim_prefix|>",
    suffix="<|fim_suffix|>",
    middle="<|fim_middle|>",
    order="psm",
    stop=(
        "<|endoftext|>",
        "<|fim_pad|>",
        "<|file_sep|>",
        "<|repo_name|>",
        "<|fim_prefix|>",
        "<|fim_suffix|>",
        "<|fim_middle|>",
        "<|im_end|>",
    ),
    repo_name="<|repo_name|>",
    file_sep="<|file_sep|>",
)
STARCODER = FimTemplate(
    family="starcoder",
    prefix="<fim_prefix>",
    suffix="<fim_suffix>",
    middle="<fim_middle>",
    order="psm",
    stop=("<|endoftext|>", "<file_sep>", "<fim_prefix>", "<fim_suffix>", "<fim_middle>"),
    repo_name="<repo_name>",
    file_sep="<file_sep>",
    path_style="in_prefix",
)
DEEPSEEK = FimTemplate(
    family="deepseek-coder",
    prefix="<｜fim▁begin｜>",
    suffix="<｜fim▁hole｜>",
    middle="<｜fim▁end｜>",
    order="psm",
    stop=("<｜end▁of▁sentence｜>", "<|EOT|>", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),
    bos="<｜begin▁of▁sentence｜>",
    path_style="comment",
)
CODELLAMA = FimTemplate(
    family="codellama",
    prefix="▁<PRE>",
    suffix="▁<SUF>",
    middle="▁<MID>",
    order="psm",
    stop=("▁<EOT>", "</s>"),
    bos="<s>",
    path_style="comment",
)
CODESTRAL = FimTemplate(
    family="codestral",
    prefix="[PREFIX]",
    suffix="[SUFFIX]",
    middle=None,
    order="spm",
    stop=("</s>", "[PREFIX]", "[SUFFIX]", "[MIDDLE]"),
    bos="<s>",
    path_style="comment",
)

# Most specific first: several families share generic tokens such as "<s>".
TEMPLATES: tuple[FimTemplate, ...] = (QWEN, STARCODER, DEEPSEEK, CODESTRAL, CODELLAMA)
TEMPLATES_BY_NAME = {t.family: t for t in TEMPLATES}


class NoFimTemplateError(ValueError):
    pass


def choose_template(backend: Backend, name: str = "auto") -> FimTemplate:
    """The family is read off the vocabulary: a model is FIM-capable iff it has the tokens."""
    if name != "auto":
        template = TEMPLATES_BY_NAME.get(name)
        if template is None:
            raise NoFimTemplateError(
                f"unknown FIM template {name!r}; known: {', '.join(TEMPLATES_BY_NAME)}"
            )
        if not template.tokens_present(backend):
            raise NoFimTemplateError(
                f"model {backend.info.name} lacks the {name} FIM tokens; use fimTemplate \"auto\""
            )
        return template
    for template in TEMPLATES:
        if template.tokens_present(backend):
            return template
    raise NoFimTemplateError(
        f"model {backend.info.name} has none of the fill-in-the-middle tokens of "
        f"{', '.join(TEMPLATES_BY_NAME)}; use a code model trained for infilling"
    )


def stop_token_ids(template: FimTemplate, backend: Backend) -> frozenset[int]:
    ids = {i for t in template.stop if (i := _special(backend, t)) is not None}
    return frozenset(ids | set(backend.info.eos_token_ids))


def render(template: FimTemplate, backend: Backend, material: FimInput) -> list[int]:
    """Token ids of the prompt, laid out so that what changes least comes first.

    Repository context, then the file header, then the code, and the code typed since the FIM
    split (`material.middle`) after the middle token: a keystroke at the cursor appends to the
    prompt, whose longest common prefix the per-document KV cache reuses. Special tokens are
    placed by id and the code is tokenized with specials split, so code cannot forge them.
    """
    ids: list[int] = []
    sp = _special_lookup(template, backend)
    if template.bos:
        ids.extend(sp(template.bos))
    ids.extend(_repo_header(template, backend, material, sp))
    middle_after_token = template.order == "psm" and template.middle is not None
    prefix = _with_path(template, material) + material.prefix
    if not middle_after_token:
        prefix += material.middle  # suffix-first families already keep the suffix stable
    prefix_ids = backend.tokenize(prefix)
    suffix_ids = backend.tokenize(material.suffix)
    if template.order == "psm":
        ids += sp(template.prefix) + prefix_ids + sp(template.suffix) + suffix_ids
    else:
        ids += sp(template.suffix) + suffix_ids + sp(template.prefix) + prefix_ids
    if template.middle:
        ids += sp(template.middle)
    if middle_after_token:
        ids += backend.tokenize(material.middle)
    return ids


def _repo_header(
    template: FimTemplate,
    backend: Backend,
    material: FimInput,
    sp: Callable[[str], list[int]],
) -> list[int]:
    ids: list[int] = []
    has_repo_tokens = template.repo_name is not None and template.file_sep is not None
    if has_repo_tokens and (material.context_files or material.path):
        assert template.repo_name is not None and template.file_sep is not None
        ids += sp(template.repo_name) + backend.tokenize((material.repo_name or "") + "\n")
        for f in material.context_files:
            ids += sp(template.file_sep) + backend.tokenize(f"{f.path}\n{f.text}\n")
        if material.path and template.path_style == "sep":
            ids += sp(template.file_sep) + backend.tokenize(material.path + "\n")
        elif template.path_style == "in_prefix":
            ids += sp(template.file_sep)
    else:
        for f in material.context_files:
            ids += backend.tokenize(_comment_header(f.path) + f.text + "\n")
    return ids


def _with_path(template: FimTemplate, material: FimInput) -> str:
    if not material.path:
        return ""
    if template.path_style == "in_prefix":
        return material.path + "\n"
    if template.path_style == "comment" or template.file_sep is None:
        return _comment_header(material.path)
    return ""


def _comment_header(path: str) -> str:
    return f"{_comment_leader(path)} {path}\n"


_HASH_COMMENT = (".py", ".sh", ".rb", ".pl", ".r", ".yaml", ".yml", ".toml", ".jl", ".ex", ".exs")


def _comment_leader(path: str) -> str:
    lowered = path.lower()
    if lowered.endswith(_HASH_COMMENT):
        return "#"
    if lowered.endswith((".lua", ".sql", ".hs")):
        return "--"
    return "//"


def _special(backend: Backend, token: str) -> int | None:
    found = backend.special_token_id(token)
    if found is None and token.startswith("▁"):
        found = backend.special_token_id(token[1:])
    return found


def _special_lookup(template: FimTemplate, backend: Backend) -> Callable[[str], list[int]]:
    def lookup(token: str) -> list[int]:
        found = _special(backend, token)
        if found is None:
            raise NoFimTemplateError(f"{template.family} template needs token {token!r}")
        return [found]

    return lookup


def prompt_text(backend: Backend, ids: Sequence[int]) -> str:
    """The prompt as text, for logs and debugging."""
    return backend.detokenize(ids)
