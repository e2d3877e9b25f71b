"""models/stopping.py and context/cursor.py: when a completion stops and how it is trimmed."""

from __future__ import annotations

import pytest

from nextab.context.cursor import decide_mode, surroundings
from nextab.models.stopping import StopRules, Surroundings, Trimmed, finalize


def around(line_prefix: str = "", rest_of_line: str = "", suffix_lines: tuple[str, ...] = ()):
    return Surroundings(line_prefix, rest_of_line, suffix_lines)


def kept(rules: StopRules, text: str) -> str | None:
    """What the stop rule keeps of `text`, or None when generation goes on."""
    keep = rules(text)
    return None if keep is None else text[:keep]


# --- line mode ------------------------------------------------------------------------------


def test_line_mode_goes_on_without_a_newline():
    rules = StopRules("line", around("x = "))
    assert rules("foo(a") is None
    assert rules("") is None


def test_line_mode_stops_at_the_first_newline():
    rules = StopRules("line", around("x = "))
    assert kept(rules, "foo(a)\n") == "foo(a)"
    assert kept(rules, "foo(a)\nbar()\nbaz()\n") == "foo(a)"


def test_line_mode_keeps_newlines_before_the_code():
    rules = StopRules("line", around(""))
    assert rules("\nfoo") is None  # the line the model means is still being written
    assert kept(rules, "\n    foo()\nbar()") == "\n    foo()"
    assert kept(rules, "   \n  \n") is None


def test_line_mode_gives_up_after_empty_lines():
    assert kept(StopRules("line", around("")), "\n\n\n") == ""


# --- block mode -----------------------------------------------------------------------------

AFTER_DEF = around("    ")  # cursor on an indented blank line after `def f():`


def test_block_goes_on_while_indented():
    rules = StopRules("block", AFTER_DEF)
    assert rules("total = 0\n    for x in xs:\n        total += x\n") is None


def test_block_stops_at_a_dedent():
    rules = StopRules("block", AFTER_DEF)
    text = "total = 0\n    return total\nprint(f())\n"
    assert kept(rules, text) == "total = 0\n    return total"


def test_block_does_not_judge_the_line_still_being_generated():
    rules = StopRules("block", AFTER_DEF)
    # "pri" has no newline yet: it may still become an indented line's text... or not.
    assert rules("total = 0\npri") is None


def test_block_blank_lines_do_not_end_it():
    rules = StopRules("block", AFTER_DEF)
    assert rules("a = 1\n\n    b = 2\n") is None


def test_block_indent_from_first_nonblank_line_when_prefix_is_empty():
    # Cursor at column 0 of a blank line; the model writes the indentation itself.
    rules = StopRules("block", around(""))
    assert kept(rules, "    a = 1\n    b = 2\nc = 3\n") == "    a = 1\n    b = 2"
    # ...or starts with an empty line first.
    assert kept(rules, "\n    a = 1\nc = 3\n") == "\n    a = 1"


def test_block_tabs_count_as_four_columns():
    rules = StopRules("block", around("\t"))
    assert rules("a = 1\n    b = 2\n") is None  # 4 spaces == one tab
    assert kept(rules, "a = 1\n  b = 2\n") == "a = 1"


def test_block_stops_at_a_line_that_repeats_the_next_suffix_line():
    rules = StopRules("block", around("    ", "", ("    return total", "print(f())")))
    text = "total = sum(xs)\n    return total\n"
    assert kept(rules, text) == "total = sum(xs)"


def test_block_stops_after_max_lines():
    rules = StopRules("block", AFTER_DEF, max_lines=3)
    text = "a = 1\n    b = 2\n    c = 3\n    d = 4\n    e = 5\n"
    assert kept(rules, text) == "a = 1\n    b = 2\n    c = 3"
    # Three lines, the third still growing: not yet.
    assert rules("a = 1\n    b = 2\n    c") is None


def test_block_max_lines_one():
    rules = StopRules("block", AFTER_DEF, max_lines=1)
    assert kept(rules, "a = 1\n    b = 2\n") == "a = 1"


def test_block_nested_closing_brace_is_not_the_suffix_brace():
    text = "function f() {\n  \n}\n"
    offset = text.index("  \n") + 2
    rules = StopRules("block", surroundings(text, offset))
    assert rules.around.suffix_lines == ("}",)
    generated = "if (x) {\n    a();\n  }\n  return 1;\n}\n"
    assert kept(rules, generated) == "if (x) {\n    a();\n  }\n  return 1;"


def test_block_from_end_of_opener_line_stops_at_a_dedent():
    rules = StopRules("block", around("def f():"))
    generated = "\n    return 1\nprint(f())\nprint(2)\n"
    assert kept(rules, generated) == "\n    return 1"


def _tree(text: str, language: str):
    from nextab.context.syntax import SyntaxTree

    tree = SyntaxTree.create(text, language)
    assert tree is not None
    return tree.snapshot()


@pytest.mark.parametrize(
    ("language", "text", "indent"),
    [
        ("python", "def outer():\n    x = 1\n\n    return x\n", "    "),
        ("javascript", "function outer() {\n  let x = 1;\n\n  return x;\n}\n", "  "),
    ],
)
def test_a_block_started_on_an_unindented_line_keeps_to_the_tree_s_block(language, text, indent):
    # The cursor is at column 0 of the blank line inside `outer`: the completion's first line
    # holds no code, so only the tree knows how deep the body is.
    offset = text.index("\n\n") + 1
    around_cursor = surroundings(text, offset, tree=_tree(text, language))
    assert around_cursor.block_indent == indent
    rules = StopRules("block", around_cursor)
    generated = f"\n{indent}y = x\nfunction_outside()\n"
    assert kept(rules, generated) == f"\n{indent}y = x"
    assert kept(rules, "\nfunction_outside()\n") == ""
    # Without the tree the first code line sets the depth, and the code outside the block stays.
    plain = StopRules("block", surroundings(text, offset))
    assert plain.around.block_indent is None
    assert kept(plain, "\nfunction_outside()\n") is None


def test_surroundings_ignore_a_tree_of_another_text():
    text = "def outer():\n    x = 1\n"
    stale = _tree("def outer():\n        x = 1\n", "python")
    assert surroundings(text, len(text) - 1, tree=stale).block_indent is None


# --- finalize: line mode -------------------------------------------------------------------


def test_finalize_line_trims_trailing_whitespace():
    assert finalize("foo(a)   \t", StopRules("line", around("x = "))) == Trimmed("foo(a)", 0)


def test_finalize_line_cuts_at_an_unmatched_closing_bracket():
    rules = StopRules("line", around("x = "))
    assert finalize("foo(a))", rules).text == "foo(a)"
    assert finalize("foo(a)) + 1", rules).text == "foo(a)"
    assert finalize("[1, 2]]", rules).text == "[1, 2]"


def test_finalize_line_cuts_at_a_mismatched_closing_bracket():
    rules = StopRules("line", around("x = ["))
    assert finalize("1, 2)", rules).text == "1, 2"


def test_finalize_line_keeps_a_bracket_opened_in_the_line_prefix():
    rules = StopRules("line", around("print(len("))
    assert finalize("xs))", rules).text == "xs))"
    assert finalize("xs)))", rules).text == "xs))"


def test_finalize_line_ignores_brackets_in_strings():
    rules = StopRules("line", around("x = "))
    assert finalize('f(")") + g("]")', rules).text == 'f(")") + g("]")'


def test_finalize_absorbs_an_auto_closed_bracket():
    # `foo(|)`: the editor already typed the ")".
    rules = StopRules("line", around("foo(", ")"))
    assert finalize("a, b)", rules) == Trimmed("a, b)", replace=1)


def test_finalize_absorbs_auto_closed_quote_and_bracket():
    rules = StopRules("line", around('print("', '")'))
    assert finalize('hello")', rules) == Trimmed('hello")', replace=2)


def test_finalize_without_the_auto_closed_bracket_replaces_nothing():
    rules = StopRules("line", around("foo(", ")"))
    assert finalize("a, b", rules) == Trimmed("a, b", replace=0)


def test_finalize_drops_a_tail_that_repeats_code_after_the_cursor():
    rules = StopRules("line", around("total = ", "helper(y)"))
    # Accepting "1 + " in front of "helper(y)" gives "total = 1 + helper(y)".
    assert finalize("1 + helper(y)", rules) == Trimmed("1 + ", replace=0)


def test_finalize_never_replaces_real_code():
    rules = StopRules("line", around("total = ", "helper(y)"))
    result = finalize("compute()", rules)
    assert result == Trimmed("compute()", replace=0)


# --- finalize: block mode ------------------------------------------------------------------


def test_finalize_block_trims_each_line_and_trailing_blank_lines():
    rules = StopRules("block", AFTER_DEF)
    assert finalize("a = 1   \n    b = 2\t\n\n\n", rules) == Trimmed("a = 1\n    b = 2", 0)


def test_finalize_block_drops_lines_repeating_the_suffix():
    # Suffix lines are whole lines, indentation included, as surroundings() gives them.
    rules = StopRules("block", around("    ", "", ("    return x", "print(1)")))
    assert finalize("y = 1\n    return x\nprint(1)", rules).text == "y = 1"


def test_finalize_block_keeps_lines_that_only_resemble_the_suffix():
    rules = StopRules("block", around("    ", "", ("    return x", "print(1)")))
    text = "y = 1\n    z = 2"
    assert finalize(text, rules).text == text


def test_finalize_block_drops_a_dedented_last_line():
    rules = StopRules("block", AFTER_DEF)
    assert finalize("return 1\nfoo()", rules).text == "return 1"


def test_finalize_block_enforces_max_lines():
    rules = StopRules("block", AFTER_DEF, max_lines=2)
    assert finalize("a = 1\n    b = 2\n    c = 3", rules).text == "a = 1\n    b = 2"


# --- decide_mode ---------------------------------------------------------------------------


def test_mode_mid_line_is_line():
    text = "x = foo(a)\n"
    assert decide_mode(text, text.index("oo(")) == "line"


def test_mode_with_auto_closed_bracket_after_cursor_is_line():
    text = "x = foo()\n"
    assert decide_mode(text, text.index(")")) == "line"


def test_mode_blank_line_after_def_is_block():
    text = "def f():\n    \n"
    assert decide_mode(text, len("def f():\n    ")) == "block"
    assert decide_mode("def f():\n", len("def f():\n")) == "block"


def test_mode_blank_line_after_opener_skipping_blank_lines():
    text = "def f():\n\n    \n"
    assert decide_mode(text, len(text) - 1) == "block"


def test_mode_end_of_opener_line_is_block():
    text = "def f():"
    assert decide_mode(text, len(text)) == "block"
    text = "if (ready) {\n}\n"
    assert decide_mode(text, text.index("\n")) == "block"


def test_mode_end_of_plain_statement_is_line():
    text = "x = compute()\n"
    assert decide_mode(text, text.index("\n")) == "line"


def test_mode_blank_line_after_plain_statement_is_line():
    text = "x = 1\n\ny = 2\n"
    assert decide_mode(text, len("x = 1\n")) == "line"


def test_mode_before_code_on_the_line_is_line():
    text = "def f():\n    return 1\n"
    assert decide_mode(text, text.index("return")) == "line"


def test_mode_explicit_is_honoured():
    assert decide_mode("def f():\n    ", len("def f():\n    "), "line") == "line"
    text = "x = foo(a)\n"
    assert decide_mode(text, 5, "block") == "block"


# --- surroundings ----------------------------------------------------------------------------

SOURCE = "def f(a):\n    return a\n\nprint(f(1))\nx = 2\ny = 3\nz = 4\n"


def test_surroundings_mid_line():
    offset = SOURCE.index("a\n\n")
    s = surroundings(SOURCE, offset)
    assert s.line_prefix == "    return "
    assert s.rest_of_line == "a"
    # The blank line is skipped; three lines of lookahead.
    assert s.suffix_lines == ("print(f(1))", "x = 2", "y = 3")


def test_surroundings_before_code_puts_the_line_first():
    offset = SOURCE.index("    return")
    s = surroundings(SOURCE, offset)
    assert s.line_prefix == ""
    assert s.rest_of_line == "    return a"
    assert s.suffix_lines == ("    return a", "print(f(1))", "x = 2")


def test_surroundings_inside_indentation():
    offset = SOURCE.index("    return") + 2
    s = surroundings(SOURCE, offset)
    assert s.line_prefix == "  "
    assert s.rest_of_line == "  return a"
    # The code after the cursor is next: its whole line, so indentation can be compared.
    assert s.suffix_lines[0] == "    return a"


def test_surroundings_end_of_line():
    offset = SOURCE.index(":\n") + 1
    s = surroundings(SOURCE, offset)
    assert s.line_prefix == "def f(a):"
    assert s.rest_of_line == ""
    assert s.suffix_lines == ("    return a", "print(f(1))", "x = 2")


def test_surroundings_lookahead_lines():
    s = surroundings(SOURCE, 0, lookahead_lines=1)
    assert s.line_prefix == ""
    assert s.rest_of_line == "def f(a):"
    assert s.suffix_lines == ("def f(a):",)


@pytest.mark.parametrize("text", ["", "abc", "abc\n"])
def test_surroundings_at_the_end_of_the_text(text):
    s = surroundings(text, len(text))
    assert s.rest_of_line == ""
    assert s.suffix_lines == ()
    assert s.line_prefix == text.rsplit("\n", 1)[-1]


def test_surroundings_last_line_without_newline():
    s = surroundings("a\nb", 1)
    assert s == Surroundings("a", "", ("b",))


def test_finalize_line_drops_blank_lines_before_the_code():
    # On a blank line at column 0 the code goes on the cursor's line.
    assert finalize("    \n    while n != 1:", StopRules("line", around(""))).text == "    while n != 1:"
    # With the cursor inside the indentation, only the rest of the indentation is inserted.
    assert finalize("\n    x = 1", StopRules("line", around("    "))).text == "x = 1"
    # After code on the line, the suggestion is the next line: one newline stays.
    assert finalize("\n\ny = 2", StopRules("line", around("x = 1"))).text == "\ny = 2"


def test_finalize_line_drops_a_copy_of_the_next_line():
    next_line = around("", "", ("        if num > 0:",))
    assert finalize("    if num > 0:", StopRules("line", next_line)).text == ""
    assert finalize("    if num < 0:", StopRules("line", next_line)).text == "    if num < 0:"
