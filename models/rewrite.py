"""The next-edit prompt: the model rewrites a marked window of code given the recent edits.

The layout follows Zed's Zeta: the developer's recent edits as unified diffs, then an excerpt
of the file with the editable region between two markers (and the cursor marked where it is
in it), and the answer is the region rewritten. Models with a chat template (ChatML's
`<|im_start|>`) get it as a chat turn, others as plain sections. What changes least comes
first (instructions, then the edits), so that the prompts for several candidate locations
after one edit share their beginning in the KV cache.

Most of the answer copies the region, so decoding drafts from the region's own tokens
(`DecodeParams.draft`): a copied stretch costs one forward pass instead of one per token.
"""

from __future__ import annotations

from dataclasses import dataclass

from nextab.models.backend import Backend

REGION_START = "<|editable_region_start|>"
REGION_END = "<|editable_region_end|>"
CURSOR = "<|user_cursor_is_here|>"

INSTRUCTIONS = (
    "You predict a developer's next edit. The developer's recent edits are shown as diffs, "
    "then the code as it is now. Rewrite the code between "
    f"{REGION_START} and {REGION_END} as it will be after the developer's next edit, "
    "which continues what the recent edits started (the same change made elsewhere, a renamed "
    "name used, a new parameter passed, an edit finished). Keep every line you do not change "
    f"exactly as it is. Answer with the rewritten region only, ending with {REGION_END}."
)


@dataclass(frozen=True)
class RewriteInput:
    path: str
    language: str  # for the code fence ("python")
    diffs: str  # the recent edits, unified diffs, the latest last
    before: str  # the excerpt before the region (whole lines)
    region: str  # the region to rewrite (whole lines)
    after: str  # the excerpt after it
    cursor: int | None = None  # where the cursor stands in `region`, if in it
    start_line: int = 0  # where the region is in the file, for the caller
    end_line: int = 0


@dataclass(frozen=True)
class RewritePrompt:
    ids: list[int]
    draft: tuple[int, ...]  # the region as the answer would copy it


def render(backend: Backend, material: RewriteInput) -> RewritePrompt:
    region = material.region
    if material.cursor is not None and 0 <= material.cursor <= len(region):
        region = region[: material.cursor] + CURSOR + region[material.cursor :]
    edits = material.diffs if material.diffs.endswith("\n") or not material.diffs else material.diffs + "\n"
    body = (
        f"### Recent edits\n\n```diff\n{edits}```\n\n"
        f"### Code\n\n```{material.language}\n{material.path}\n"
        f"{material.before}{REGION_START}\n{region}{_newline(region)}{REGION_END}\n"
        f"{material.after}{_newline(material.after)}```\n"
    )
    start, end = backend.special_token_id("<|im_start|>"), backend.special_token_id("<|im_end|>")
    answer_head = f"{REGION_START}\n"
    if start is not None and end is not None:
        ids = [
            start, *backend.tokenize(f"system\n{INSTRUCTIONS}"), end, *backend.tokenize("\n"),
            start, *backend.tokenize(f"user\n{body}"), end, *backend.tokenize("\n"),
            start, *backend.tokenize(f"assistant\n{answer_head}"),
        ]  # fmt: skip
    else:
        ids = backend.tokenize(f"### Instruction\n\n{INSTRUCTIONS}\n\n{body}\n### Response\n\n{answer_head}")
    return RewritePrompt(ids, tuple(backend.tokenize(material.region + REGION_END)))


def _newline(text: str) -> str:
    return "" if not text or text.endswith("\n") else "\n"


def stop_check(text: str) -> int | None:
    """Where the answer ends: at the region's end marker (or a closing code fence)."""
    found = [i for i in (text.find(REGION_END), text.find("\n```")) if i >= 0]
    return min(found) if found else None


def parse(answer: str, region: str) -> str | None:
    """The rewritten region from the model's answer, line ends as in `region`; None if the
    answer is unusable (empty when the region was not, or still holding a marker)."""
    cut = stop_check(answer)
    text = answer if cut is None else answer[:cut]
    text = text.replace(CURSOR, "")
    if REGION_START in text or (not text.strip() and region.strip()):
        return None
    if text.startswith("```"):
        text = text[text.find("\n") + 1 :]
    if region.endswith("\n") and not text.endswith("\n"):
        text += "\n"
    if not region.endswith("\n") and text.endswith("\n") and region:
        text = text[:-1]
    return text


def fence_language(path: str, language_id: str | None) -> str:
    if language_id:
        return language_id
    suffix = path.rsplit(".", 1)[-1] if "." in path else ""
    return {"py": "python", "js": "javascript", "ts": "typescript", "rs": "rust", "go": "go"}.get(
        suffix, suffix
    )


