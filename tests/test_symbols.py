"""Definitions, imports and used names read from real sources with the real grammars."""

from __future__ import annotations

import keyword
import textwrap

from hypothesis import given, settings
from hypothesis import strategies as st

from nextab.context.symbols import Definition, FileSymbols, Import, extract, identifiers


def _src(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def _shape(symbols: FileSymbols) -> list[tuple[str, str, str | None]]:
    return [(d.kind, d.name, d.container) for d in symbols.definitions]


def _only(symbols: FileSymbols, name: str, container: str | None = None) -> Definition:
    found = [d for d in symbols.named(name) if container is None or d.container == container]
    assert len(found) == 1, found
    return found[0]


PYTHON = _src('''
    """Sessions."""
    from __future__ import annotations

    import os.path
    import numpy as np, json
    from . import adapters
    from ..compat import urljoin as join, quote
    from .models import *

    DEFAULT_TIMEOUT = 30


    def merge_setting(request_setting, session_setting,
                      dict_class=dict):
        def inner():
            return 1
        return inner()


    class Session(SessionRedirectMixin):
        """A session."""

        def __init__(self) -> None:
            self.headers = {}

        @property
        def closed(self) -> bool:
            return False
''')


def test_python_definitions_kinds_containers_lines_and_signatures() -> None:
    symbols = extract(PYTHON, "python")
    assert _shape(symbols) == [
        ("variable", "DEFAULT_TIMEOUT", None),
        ("function", "merge_setting", None),  # `inner` is local to it: left out
        ("class", "Session", None),
        ("method", "__init__", "Session"),
        ("method", "closed", "Session"),
    ]
    merge = _only(symbols, "merge_setting")
    assert merge.signature == (
        "def merge_setting(request_setting, session_setting,\n                  dict_class=dict):"
    )
    lines = PYTHON.splitlines()
    assert lines[merge.start_line].startswith("def merge_setting")
    assert lines[merge.end_line].strip() == "return inner()"
    assert PYTHON[merge.start_offset : merge.end_offset].endswith("return inner()")
    assert _only(symbols, "Session").signature == "class Session(SessionRedirectMixin):"
    assert _only(symbols, "closed").signature == "def closed(self) -> bool:"
    assert _only(symbols, "DEFAULT_TIMEOUT").signature == "DEFAULT_TIMEOUT = 30"


def test_python_imports() -> None:
    # `from __future__ import ...` is a compiler directive, not a module: the grammar gives it
    # its own statement kind, which the query leaves out.
    imports = list(extract(PYTHON, "python").imports)
    assert imports == [
        Import("os.path", line=3),
        Import("numpy", alias="np", line=4),
        Import("json", line=4),
        Import(".", ("adapters",), line=5, level=1),
        Import("..compat", ("urljoin", "quote"), line=6, level=2, renames=(("urljoin", "join"),)),
        Import(".models", ("*",), line=7, level=1),
    ]


JAVASCRIPT = _src("""
    import React, { useState, useEffect as effect } from 'react';
    import * as api from './api.js';
    import './styles.css';
    export { format } from './format';
    export * from './types';
    const path = require('path');
    const { readFile, writeFile: write } = require('./fs-utils');

    export const MAX = 10;

    export function App(props) {
      function local() {}
      const [value, setValue] = useState(0);
      return value;
    }

    const handler = async (event) => {
      await api.send(event);
    };

    class Store extends Base {
      constructor(options) {
        super(options);
      }

      get(key) {
        return this.items[key];
      }
    }

    async function load() {
      const mod = await import('./lazy');
      return mod;
    }
""")


def test_javascript_definitions() -> None:
    symbols = extract(JAVASCRIPT, "javascript")
    assert _shape(symbols) == [
        ("variable", "path", None),
        ("variable", "MAX", None),
        ("function", "App", None),
        ("function", "handler", None),
        ("class", "Store", None),
        ("method", "constructor", "Store"),
        ("method", "get", "Store"),
        ("function", "load", None),
    ]
    assert _only(symbols, "App").signature == "function App(props)"
    assert _only(symbols, "handler").signature == "const handler = async (event) =>"
    assert _only(symbols, "Store").signature == "class Store extends Base"
    assert _only(symbols, "get").signature == "get(key)"
    lines = JAVASCRIPT.splitlines()
    store = _only(symbols, "Store")
    assert lines[store.start_line] == "class Store extends Base {"
    assert lines[store.end_line] == "}"


def test_javascript_imports() -> None:
    imports = extract(JAVASCRIPT, "javascript").imports
    assert imports == (
        Import("react", ("default", "useState", "useEffect"), line=0,
               renames=(("default", "React"), ("useEffect", "effect"))),
        Import("./api.js", alias="api", line=1),
        Import("./styles.css", line=2),
        Import("./format", ("format",), line=3),
        Import("./types", ("*",), line=4),
        Import("path", alias="path", line=5),
        Import("./fs-utils", ("readFile", "writeFile"), line=6),
        Import("./lazy", line=31),
    )


TYPESCRIPT = _src("""
    import type { Config } from "./config";
    import fs = require("fs");

    export interface Shape {
      area(): number;
      readonly name: string;
    }

    export type Point = { x: number; y: number };

    export enum Color { Red, Green }

    export abstract class Base<T> implements Shape {
      abstract area(): number;
      describe(prefix: string): string {
        return prefix + this.name;
      }
    }

    export function distance(a: Point, b: Point): number {
      return Math.hypot(a.x - b.x, a.y - b.y);
    }

    export namespace Geometry {
      export function origin(): Point { return { x: 0, y: 0 }; }
    }

    declare function external(x: number): void;
""")


def test_typescript_definitions() -> None:
    symbols = extract(TYPESCRIPT, "typescript")
    assert _shape(symbols) == [
        ("interface", "Shape", None),
        ("method", "area", "Shape"),
        ("type", "Point", None),
        ("enum", "Color", None),
        ("class", "Base", None),
        ("method", "area", "Base"),
        ("method", "describe", "Base"),
        ("function", "distance", None),
        ("namespace", "Geometry", None),
        ("function", "origin", "Geometry"),
        ("function", "external", None),
    ]
    assert _only(symbols, "distance").signature == (
        "function distance(a: Point, b: Point): number"
    )
    assert _only(symbols, "Base").signature == "abstract class Base<T> implements Shape"
    assert _only(symbols, "Point").signature == "type Point = { x: number; y: number };"
    assert _only(symbols, "describe").signature == "describe(prefix: string): string"
    assert _only(symbols, "Shape").start_line == 3


def test_typescript_imports() -> None:
    assert extract(TYPESCRIPT, "typescript").imports == (
        Import("./config", ("Config",), line=0),
        Import("fs", alias="fs", line=1),
    )


def test_tsx_component() -> None:
    source = _src("""
        import { Button } from "@/components/Button";
        export const Card = ({ title }: Props) => <div><Button>{title}</Button></div>;
        export default function Page(): JSX.Element {
          return <Card title="x" />;
        }
    """)
    symbols = extract(source, "tsx")
    assert _shape(symbols) == [("function", "Card", None), ("function", "Page", None)]
    assert _only(symbols, "Page").signature == "function Page(): JSX.Element"
    assert symbols.imports == (Import("@/components/Button", ("Button",), line=0),)


GO = _src("""
    package server

    import (
        "context"
        "net/http"
        log "github.com/sirupsen/logrus"
    )

    const DefaultPort = 8080

    type Handler interface {
        Serve(ctx context.Context) error
    }

    type Server struct {
        addr string
    }

    type ID = string

    func New(addr string) *Server {
        return &Server{addr: addr}
    }

    func (s *Server) Start(ctx context.Context) error {
        handler := func() {}
        _ = handler
        return http.ListenAndServe(s.addr, nil)
    }
""")


def test_go_definitions_and_imports() -> None:
    symbols = extract(GO, "go")
    assert _shape(symbols) == [
        ("constant", "DefaultPort", None),
        ("interface", "Handler", None),
        ("struct", "Server", None),
        ("type", "ID", None),
        ("function", "New", None),
        ("method", "Start", "Server"),
    ]
    assert _only(symbols, "Start").signature == (
        "func (s *Server) Start(ctx context.Context) error"
    )
    assert _only(symbols, "Server").signature == "type Server struct"
    assert _only(symbols, "DefaultPort").signature == "const DefaultPort = 8080"
    assert _only(symbols, "New").start_line == 20
    assert symbols.imports == (
        Import("context", line=3),
        Import("net/http", line=4),
        Import("github.com/sirupsen/logrus", alias="log", line=5),
    )


RUST = _src("""
    use std::collections::{HashMap, hash_map::Entry as MapEntry};
    use std::io;
    use crate::config::*;
    use super::Error as ParseError;

    pub const LIMIT: usize = 64;

    pub struct Parser<'a> {
        input: &'a str,
    }

    pub enum Token { Ident(String), Number(i64) }

    pub trait Visitor {
        fn visit(&mut self, token: &Token);
    }

    impl<'a> Parser<'a> {
        pub fn new(input: &'a str) -> Self {
            fn helper() {}
            Parser { input }
        }
    }

    impl Visitor for Printer {
        fn visit(&mut self, token: &Token) {}
    }

    macro_rules! token { ($t:expr) => { $t }; }

    mod tests;

    pub fn parse(input: &str) -> Result<Vec<Token>, ParseError> {
        Ok(vec![])
    }
""")


def test_rust_definitions_and_imports() -> None:
    symbols = extract(RUST, "rust")
    assert _shape(symbols) == [
        ("constant", "LIMIT", None),
        ("struct", "Parser", None),
        ("enum", "Token", None),
        ("trait", "Visitor", None),
        ("method", "visit", "Visitor"),
        ("method", "new", "Parser"),
        ("method", "visit", "Printer"),
        ("macro", "token", None),
        ("module", "tests", None),
        ("function", "parse", None),
    ]
    assert _only(symbols, "new").signature == "pub fn new(input: &'a str) -> Self"
    assert _only(symbols, "parse").signature == (
        "pub fn parse(input: &str) -> Result<Vec<Token>, ParseError>"
    )
    assert _only(symbols, "Parser").signature == "pub struct Parser<'a>"
    assert symbols.imports == (
        Import("std::collections", ("HashMap",), line=0),
        Import("std::collections::hash_map", ("Entry",), line=0, renames=(("Entry", "MapEntry"),)),
        Import("std", ("io",), line=1),
        Import("crate::config", ("*",), line=2),
        Import("super", ("Error",), line=3, renames=(("Error", "ParseError"),)),
    )


JAVA = _src("""
    package com.example.shop;

    import java.util.List;
    import java.util.concurrent.*;
    import static org.junit.Assert.assertEquals;

    public class Cart<T extends Item> implements Iterable<T> {
        private final List<T> items;

        public Cart(List<T> items) {
            this.items = items;
        }

        public int total() {
            return items.size();
        }

        enum State { OPEN, CLOSED }
    }

    interface Priced {
        long price();
    }

    record Line(String sku, int quantity) {}
""")


def test_java_definitions_and_imports() -> None:
    symbols = extract(JAVA, "java")
    assert _shape(symbols) == [
        ("class", "Cart", None),
        ("constructor", "Cart", "Cart"),
        ("method", "total", "Cart"),
        ("enum", "State", "Cart"),
        ("interface", "Priced", None),
        ("method", "price", "Priced"),
        ("class", "Line", None),
    ]
    assert _only(symbols, "total").signature == "public int total()"
    cart = next(d for d in symbols.definitions if d.kind == "class" and d.name == "Cart")
    assert cart.signature == "public class Cart<T extends Item> implements Iterable<T>"
    assert (cart.start_line, cart.end_line) == (6, 18)
    assert symbols.imports == (
        Import("java.util", ("List",), line=2),
        Import("java.util.concurrent", ("*",), line=3),
        Import("org.junit.Assert", ("assertEquals",), line=4),
    )


C = _src("""
    #ifndef BUFFER_H
    #define BUFFER_H
    #include <stdlib.h>
    #include "arena.h"

    #define BUFFER_MIN 16
    #define MAX(a, b) ((a) > (b) ? (a) : (b))

    typedef struct buffer {
        char *data;
        size_t len;
    } buffer_t;

    enum mode { READ, WRITE };

    buffer_t *buffer_new(size_t capacity);

    static int grow(buffer_t *b, size_t extra) {
        int local_prototype(void);
        return 0;
    }
    #endif
""")


def test_c_definitions_and_includes() -> None:
    symbols = extract(C, "c")
    assert _shape(symbols) == [
        ("macro", "BUFFER_H", None),
        ("macro", "BUFFER_MIN", None),
        ("macro", "MAX", None),
        ("type", "buffer_t", None),
        ("struct", "buffer", None),
        ("enum", "mode", None),
        ("function", "buffer_new", None),
        ("function", "grow", None),
    ]
    assert _only(symbols, "buffer_new").signature == "buffer_t *buffer_new(size_t capacity);"
    assert _only(symbols, "grow").signature == "static int grow(buffer_t *b, size_t extra)"
    assert _only(symbols, "MAX").end_line == _only(symbols, "MAX").start_line == 6
    assert symbols.imports == (Import("stdlib.h", line=2), Import("arena.h", line=3))


CPP = _src("""
    #include <vector>
    #include "geometry/shape.hpp"

    namespace geo {

    class Circle : public Shape {
    public:
        explicit Circle(double r);
        double area() const override;
        double radius() const { return r_; }
    private:
        double r_;
    };

    struct Point { double x, y; };

    using Points = std::vector<Point>;

    }  // namespace geo

    double geo::Circle::area() const {
        return 3.14159 * r_ * r_;
    }

    template <typename T>
    T clamp(T v, T lo, T hi) {
        return v < lo ? lo : (v > hi ? hi : v);
    }
""")


def test_cpp_definitions_and_includes() -> None:
    symbols = extract(CPP, "cpp")
    assert _shape(symbols) == [
        ("namespace", "geo", None),
        ("class", "Circle", "geo"),
        ("method", "Circle", "Circle"),
        ("method", "area", "Circle"),
        ("method", "radius", "Circle"),
        ("struct", "Point", "geo"),
        ("type", "Points", "geo"),
        ("method", "area", "geo::Circle"),
        ("function", "clamp", None),
    ]
    outside = _only(symbols, "area", "geo::Circle")
    assert outside.signature == "double geo::Circle::area() const"
    assert _only(symbols, "clamp").signature == "T clamp(T v, T lo, T hi)"
    assert _only(symbols, "radius").signature == "double radius() const"
    assert symbols.imports == (Import("vector", line=0), Import("geometry/shape.hpp", line=1))


def test_unknown_language_and_broken_source_do_not_raise() -> None:
    assert extract("whatever", "cobol") == FileSymbols("cobol", (), ())
    broken = extract("def f(:\n    return\nclass C:\n    def m(self): pass\n", "python")
    assert "C" in [d.name for d in broken.definitions]


def test_offsets_are_string_indices_with_non_ascii_text() -> None:
    source = "# ünïcødé ✓ comment\ndef straße(x):\n    return 'ñ'\n\nclass Größe:\n    pass\n"
    symbols = extract(source, "python")
    for definition in symbols.definitions:
        body = source[definition.start_offset : definition.end_offset]
        assert body.startswith(("def ", "class "))
        assert definition.name in body.split("\n", 1)[0]
    assert _only(symbols, "Größe").signature == "class Größe:"


@settings(max_examples=40, deadline=None)
@given(
    prefix=st.text(
        alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\\"),
        max_size=30,
    ),
    names=st.lists(
        st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True).filter(
            lambda name: not keyword.iskeyword(name) and not keyword.issoftkeyword(name)
        ),
        min_size=1,
        max_size=5,
        unique=True,
    ),
)
def test_offsets_slice_the_definition_whatever_comes_before(prefix: str, names: list[str]) -> None:
    # A comment of arbitrary text (any width in UTF-8) must not shift string offsets.
    source = "# " + prefix.replace("\n", " ").replace("\r", " ") + "\n" + "".join(
        f"def {name}(ä='é'):\n    return {i}\n" for i, name in enumerate(names)
    )
    definitions = extract(source, "python").definitions
    assert [d.name for d in definitions] == names
    for definition in definitions:
        assert source[definition.start_offset :].startswith(f"def {definition.name}(")
        assert source[definition.end_offset - 1] .isdigit()


def test_identifiers_in_a_range_skip_strings_comments_and_keywords() -> None:
    source = "total = price * count  # discount later\nlabel = 'name'\nresult = helper(total)\n"
    assert identifiers(source, "python") == ["total", "price", "count", "label", "result", "helper"]
    third_line = source.index("result")
    assert identifiers(source, "python", third_line) == ["result", "helper", "total"]
    assert identifiers(source, "python", 0, 5) == ["total"]
    # Positions past the end are clamped, not errors.
    assert identifiers(source, "python", 10_000, 20_000) == []
    assert identifiers(source, "nope") == []


def test_identifiers_cover_types_and_fields() -> None:
    source = "func (s *Server) Start() { s.addr = Port }"
    assert identifiers("package p\n" + source, "go") == [
        "p", "s", "Server", "Start", "addr", "Port",
    ]
