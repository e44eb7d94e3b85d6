"""A small CQL parser for the statement shapes the profile stores and the driver send.

Why not a full grammar: the server only has to run the statements this
project issues (plus the driver's system queries); anything else gets a
SyntaxError response, which is what a real node answers to CQL it cannot parse.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import statements as st
from .codec import CqlType, make_type
from .framing import syntax_error

_TOKEN = re.compile(
    r"""(?P<ws>\s+|--[^\n]*|//[^\n]*|/\*.*?\*/)
    |(?P<str>'(?:[^']|'')*')
    |(?P<qid>"(?:[^"]|"")*")
    |(?P<num>-?\d+\.\d*(?:[eE][-+]?\d+)?|-?\d+(?:[eE][-+]?\d+)?)
    |(?P<id>[A-Za-z_][A-Za-z0-9_]*)
    |(?P<sym>>=|<=|!=|[(),;?*=<>.{}:\[\]])""",
    re.X | re.S,
)


@dataclass(frozen=True, slots=True)
class Tok:
    kind: str
    text: str


def tokenize(text: str) -> list[Tok]:
    out: list[Tok] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise syntax_error(f"line 1:{pos} unexpected character {text[pos]!r}")
        pos = m.end()
        kind = m.lastgroup or ""
        if kind != "ws":
            out.append(Tok(kind, m.group()))
    return out


def parse(text: str) -> tuple[st.Statement, int]:
    """Parse one statement; returns it with its number of bind markers."""
    p = _Parser(tokenize(text))
    stmt = p.statement()
    p.accept(";")
    if p.peek().kind != "eof":
        raise syntax_error(f"line 1: unexpected input at {p.peek().text!r}")
    return stmt, p.markers


class _Parser:
    def __init__(self, toks: list[Tok]) -> None:
        self.toks = toks
        self.i = 0
        self.markers = 0

    # -- token helpers ---------------------------------------------------
    def peek(self, ahead: int = 0) -> Tok:
        j = self.i + ahead
        return self.toks[j] if j < len(self.toks) else Tok("eof", "")

    def next(self) -> Tok:
        tok = self.peek()
        if tok.kind == "eof":
            raise syntax_error("line 1: unexpected end of statement")
        self.i += 1
        return tok

    def is_kw(self, *words: str) -> bool:
        return all(self.peek(n).text.upper() == w for n, w in enumerate(words))

    def accept(self, *words: str) -> bool:
        if self.is_kw(*words):
            self.i += len(words)
            return True
        return False

    def expect(self, *words: str) -> None:
        if not self.accept(*words):
            raise syntax_error(f"line 1: expected {' '.join(words)!r}, got {self.peek().text!r}")

    def ident(self) -> str:
        tok = self.next()
        if tok.kind == "id":
            return tok.text.lower()
        if tok.kind == "qid":
            return tok.text[1:-1].replace('""', '"')
        raise syntax_error(f"line 1: expected an identifier, got {tok.text!r}")

    def qualified(self) -> tuple[str | None, str]:
        first = self.ident()
        if self.accept("."):
            return first, self.ident()
        return None, first

    def term(self) -> st.Term:
        tok = self.peek()
        if tok.text == "?":
            self.i += 1
            self.markers += 1
            return st.Marker(self.markers - 1)
        return st.Literal(self.literal())

    def literal(self) -> Any:
        tok = self.next()
        if tok.kind == "str":
            return tok.text[1:-1].replace("''", "'")
        if tok.kind == "num":
            return float(tok.text) if any(c in tok.text for c in ".eE") else int(tok.text)
        upper = tok.text.upper()
        if upper in ("TRUE", "FALSE"):
            return upper == "TRUE"
        if upper == "NULL":
            return None
        if tok.text == "[":
            return self._sequence("]")
        if tok.text == "{":
            return self._map_or_set()
        raise syntax_error(f"line 1: unexpected {tok.text!r}")

    def _sequence(self, close: str) -> list[Any]:
        items: list[Any] = []
        while not self.accept(close):
            items.append(self.literal())
            self.accept(",")
        return items

    def _map_or_set(self) -> Any:
        out: dict[Any, Any] = {}
        items: list[Any] = []
        while not self.accept("}"):
            key = self.literal()
            if self.accept(":"):
                out[key] = self.literal()
            else:
                items.append(key)
            self.accept(",")
        return items if items else out

    def idents(self) -> list[str]:
        self.expect("(")
        names = [self.ident()]
        while self.accept(","):
            names.append(self.ident())
        self.expect(")")
        return names

    # -- statements ------------------------------------------------------
    def statement(self) -> st.Statement:
        head = self.peek().text.upper()
        handlers: dict[str, Callable[[], st.Statement]] = {
            "SELECT": self.select,
            "INSERT": self.insert,
            "UPDATE": self.update,
            "DELETE": self.delete,
            "CREATE": self.create,
            "DROP": self.drop,
            "ALTER": self.alter,
            "USE": self.use,
            "TRUNCATE": self.truncate,
        }
        handler = handlers.get(head)
        if handler is None:
            raise syntax_error(f"line 1:0 no viable alternative at input {self.peek().text!r}")
        self.i += 1
        return handler()

    def select(self) -> st.Select:
        self.accept("JSON")
        selectors = [self.selector()]
        while self.accept(","):
            selectors.append(self.selector())
        self.expect("FROM")
        ks, table = self.qualified()
        stmt = st.Select(ks, table, selectors, self.where())
        if self.accept("ORDER", "BY"):
            column = self.ident()
            if self.accept("ANN", "OF"):
                stmt.ann = (column, self.term())
            elif not (self.accept("ASC") or self.accept("DESC")):
                raise syntax_error("line 1: ORDER BY supports only ANN OF here")
        if self.accept("LIMIT"):
            stmt.limit = self.term()
        stmt.allow_filtering = self.accept("ALLOW", "FILTERING")
        return stmt

    def selector(self) -> st.Selector:
        if self.accept("*"):
            return st.Selector("star")
        name = self.ident()
        sel = st.Selector("column", column=name)
        if self.accept("("):
            func = name
            if func == "count":
                self.accept("*") or self.ident()
                sel = st.Selector("count", func=func)
            elif func in ("token", "writetime", "ttl"):
                sel = st.Selector(func, column=self.ident(), func=func)
            elif func.startswith("similarity_"):
                column = self.ident()
                self.expect(",")
                sel = st.Selector("similarity", column=column, arg=self.term(), func=func)
            else:
                raise syntax_error(f"line 1: unknown function {func}")
            self.expect(")")
        if self.accept("AS"):
            self.ident()
        return sel

    def where(self) -> list[st.Relation]:
        rels: list[st.Relation] = []
        if not self.accept("WHERE"):
            return rels
        rels.append(self.relation())
        while self.accept("AND"):
            rels.append(self.relation())
        return rels

    def relation(self) -> st.Relation:
        if self.is_kw("TOKEN", "("):
            self.i += 1
            column = self.idents()[0]
            op = self.next().text
            if self.accept("TOKEN"):
                self.expect("(")
                value = self.term()
                self.expect(")")
                return st.Relation(column, op, value, token=True, token_of_value=True)
            return st.Relation(column, op, self.term(), token=True)
        column = self.ident()
        if self.accept("IN"):
            if self.accept("("):
                values: list[st.Term] = []
                while not self.accept(")"):
                    values.append(self.term())
                    self.accept(",")
                return st.Relation(column, "IN", values)
            return st.Relation(column, "IN", self.term())
        op = self.next().text
        if op not in ("=", "<", "<=", ">", ">="):
            raise syntax_error(f"line 1: unsupported operator {op}")
        return st.Relation(column, op, self.term())

    def using(self) -> tuple[st.Term | None, st.Term | None]:
        timestamp: st.Term | None = None
        ttl: st.Term | None = None
        if self.accept("USING"):
            while True:
                if self.accept("TIMESTAMP"):
                    timestamp = self.term()
                elif self.accept("TTL"):
                    ttl = self.term()
                else:
                    raise syntax_error("line 1: expected TIMESTAMP or TTL")
                if not self.accept("AND"):
                    break
        return timestamp, ttl

    def insert(self) -> st.Insert:
        self.expect("INTO")
        ks, table = self.qualified()
        columns = self.idents()
        self.expect("VALUES")
        self.expect("(")
        values = [self.term()]
        while self.accept(","):
            values.append(self.term())
        self.expect(")")
        if self.accept("IF", "NOT", "EXISTS"):
            raise syntax_error("lightweight transactions are not supported by this test server")
        timestamp, ttl = self.using()
        if len(columns) != len(values):
            raise syntax_error("line 1: unmatched column names/values")
        return st.Insert(ks, table, columns, values, timestamp, ttl)

    def update(self) -> st.Update:
        ks, table = self.qualified()
        timestamp, ttl = self.using()
        self.expect("SET")
        assignments = []
        while True:
            column = self.ident()
            self.expect("=")
            assignments.append((column, self.term()))
            if not self.accept(","):
                break
        return st.Update(ks, table, assignments, self.where(), timestamp, ttl)

    def delete(self) -> st.Delete:
        columns: list[str] = []
        while not self.is_kw("FROM"):
            columns.append(self.ident())
            self.accept(",")
        self.expect("FROM")
        ks, table = self.qualified()
        timestamp, _ = self.using()
        return st.Delete(ks, table, columns, self.where(), timestamp)

    def if_not_exists(self) -> bool:
        return self.accept("IF", "NOT", "EXISTS")

    def create(self) -> st.Statement:
        if self.accept("KEYSPACE"):
            ine = self.if_not_exists()
            name = self.ident()
            self.expect("WITH")
            stmt = st.CreateKeyspace(name, ine, {})
            while True:
                option = self.ident()
                self.expect("=")
                value = self.literal()
                if option == "replication":
                    stmt.replication = {str(k): str(v) for k, v in dict(value).items()}
                elif option == "durable_writes":
                    stmt.durable_writes = bool(value)
                if not self.accept("AND"):
                    return stmt
        if self.accept("TABLE"):
            return self.create_table()
        custom = self.accept("CUSTOM")
        self.expect("INDEX")
        ine = self.if_not_exists()
        name = "" if self.is_kw("ON") else self.ident()
        self.expect("ON")
        ks, table = self.qualified()
        column = self.idents()[0]
        index = st.CreateIndex(ks, table, name or f"{table}_{column}_idx", column, ine)
        if custom and self.accept("USING"):
            index.custom_class = str(self.literal())
            if self.accept("WITH", "OPTIONS"):
                self.expect("=")
                index.options = {str(k): str(v) for k, v in dict(self.literal()).items()}
        return index

    def create_table(self) -> st.CreateTable:
        ine = self.if_not_exists()
        ks, table = self.qualified()
        self.expect("(")
        stmt = st.CreateTable(ks, table, ine, {}, [], [])
        while True:
            if self.accept("PRIMARY", "KEY"):
                self.expect("(")
                if self.peek().text == "(":
                    stmt.partition_key = self.idents()
                else:
                    stmt.partition_key = [self.ident()]
                while self.accept(","):
                    stmt.clustering.append(self.ident())
                self.expect(")")
            else:
                name = self.ident()
                stmt.columns[name] = self.type_()
                if self.accept("PRIMARY", "KEY"):
                    stmt.partition_key = [name]
            if not self.accept(","):
                break
        self.expect(")")
        while self.peek().kind not in ("eof",) and self.peek().text != ";":
            self.i += 1  # table options (WITH ...) do not change semantics here
        if not stmt.partition_key:
            raise syntax_error("line 1: table needs a PRIMARY KEY")
        return stmt

    def type_(self) -> CqlType:
        name = self.ident()
        params: list[CqlType] = []
        size = 0
        if self.accept("<"):
            while not self.accept(">"):
                if self.peek().kind == "num":
                    size = int(self.next().text)
                else:
                    params.append(self.type_())
                self.accept(",")
        try:
            return make_type(name, tuple(params), size)
        except ValueError as exc:
            raise syntax_error(f"line 1: {exc}") from exc

    def drop(self) -> st.Drop:
        kind = self.next().text.upper()
        if kind not in ("KEYSPACE", "TABLE", "INDEX"):
            raise syntax_error(f"line 1: cannot DROP {kind}")
        if_exists = self.accept("IF", "EXISTS")
        ks, name = self.qualified()
        return st.Drop(kind, ks, name, if_exists)

    def alter(self) -> st.AlterTableAdd:
        if not self.accept("TABLE"):
            raise syntax_error("line 1: only ALTER TABLE ... ADD is supported here")
        ks, table = self.qualified()
        if not self.accept("ADD"):
            raise syntax_error("line 1: only ALTER TABLE ... ADD is supported here")
        column = self.ident()
        return st.AlterTableAdd(ks, table, column, self.type_())

    def use(self) -> st.Use:
        return st.Use(self.ident())

    def truncate(self) -> st.Truncate:
        self.accept("TABLE")
        ks, table = self.qualified()
        return st.Truncate(ks, table)
