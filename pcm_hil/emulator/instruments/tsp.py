"""A Lua subset for the emulated Keithley 2600B's Test Script Processor (TSP).

Real Lua semantics for what it covers: numbers (doubles), strings, booleans, nil,
tables, functions with closures, ``local``, multiple assignment, ``if/elseif/else``,
``while``, ``repeat … until``, numeric and generic ``for`` (``ipairs``/``pairs``),
``break``, ``return``, operators with Lua precedence (``or and < > <= >= ~= == .. + - * /
% ^ not # -``), method calls ``a:b()``, table constructors, ``--`` comments. The
instrument's objects (``smua``, ``localnode``, …) are :class:`Node` objects whose fields
are Python properties. Not covered: coroutines, metatables, varargs, goto, string
methods beyond ``string.format``/``tostring``/``tonumber``; long strings ``[[…]]``.

A statement budget stops runaway scripts (the real instrument would hang): -286.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable

KEYWORDS = {"and", "break", "do", "else", "elseif", "end", "false", "for", "function", "if", "in", "local", "nil",
            "not", "or", "repeat", "return", "then", "true", "until", "while"}
TOKEN = re.compile(r"""
    (?P<ws>\s+|--[^\n]*)
  | (?P<num>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<name>[A-Za-z_]\w*)
  | (?P<str>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<op>\.\.|==|~=|<=|>=|[-+*/%^#<>=(){}\[\];:,.])
""", re.X)
BINARY = {"or": 1, "and": 2, "<": 3, ">": 3, "<=": 3, ">=": 3, "~=": 3, "==": 3, "..": 4, "+": 5, "-": 5,
          "*": 6, "/": 6, "%": 6, "^": 8}
RIGHT = {"..", "^"}
UNARY_PRIORITY = 7
MAX_STEPS = 2_000_000


class LuaError(Exception):
    """An error the TSP reports: ``code`` -285 (syntax) or -286 (runtime)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def syntax_error(msg: str, line: int = 1) -> LuaError:
    return LuaError(-285, f"TSP Syntax error at line {line}: {msg}")


def runtime_error(msg: str, line: int = 1) -> LuaError:
    return LuaError(-286, f"TSP Runtime error at line {line}: {msg}")


class Node:
    """An instrument object: fields are values, Python getters/setters, or children."""

    def __init__(self, name: str, fields: dict[str, Any] | None = None,
                 props: dict[str, tuple[Callable[[], Any], Callable[[Any], None] | None]] | None = None) -> None:
        self.name = name
        self.fields = dict(fields or {})
        self.props = dict(props or {})

    def get(self, key: Any) -> Any:
        if key in self.props:
            return self.props[key][0]()
        if key in self.fields:
            return self.fields[key]
        return None

    def set(self, key: Any, value: Any) -> None:
        if key in self.props:
            setter = self.props[key][1]
            if setter is None:
                raise runtime_error(f"attribute `{key}' of `{self.name}' is read-only")
            setter(value)
            return
        if key in self.fields and not isinstance(self.fields[key], Node) and not callable(self.fields[key]):
            raise runtime_error(f"attribute `{key}' of `{self.name}' is read-only")
        raise runtime_error(f"attempt to set unknown field `{key}' of `{self.name}'")


class Table:
    """A Lua table (array part and hash part in one dict)."""

    def __init__(self, items: dict[Any, Any] | None = None) -> None:
        self.items: dict[Any, Any] = dict(items or {})

    @staticmethod
    def _key(key: Any) -> Any:
        return float(key) if isinstance(key, (int, float)) and not isinstance(key, bool) else key

    def get(self, key: Any) -> Any:
        return self.items.get(self._key(key))

    def set(self, key: Any, value: Any) -> None:
        if key is None:
            raise runtime_error("table index is nil")
        if value is None:
            self.items.pop(self._key(key), None)
        else:
            self.items[self._key(key)] = value

    def length(self) -> float:
        n = 0
        while float(n + 1) in self.items:
            n += 1
        return float(n)


class Function:
    """A Lua function (closure)."""

    def __init__(self, params: list[str], body: list, env: "Scope", interp: "Interpreter", name: str) -> None:
        self.params, self.body, self.env, self.interp, self.name = params, body, env, interp, name

    def __call__(self, *args: Any) -> list[Any]:
        scope = Scope(self.env)
        for i, p in enumerate(self.params):
            scope.declare(p, args[i] if i < len(args) else None)
        try:
            self.interp.block(self.body, scope)
        except _Return as r:
            return r.values
        return []


class _Return(Exception):
    def __init__(self, values: list[Any]) -> None:
        self.values = values


class _Break(Exception):
    pass


class Scope:
    def __init__(self, parent: "Scope | None" = None) -> None:
        self.vars: dict[str, Any] = {}
        self.parent = parent

    def declare(self, name: str, value: Any) -> None:
        self.vars[name] = value

    def find(self, name: str) -> "Scope | None":
        s: Scope | None = self
        while s is not None:
            if name in s.vars:
                return s
            s = s.parent
        return None


# -- parsing ------------------------------------------------------------------------------
class Parser:
    def __init__(self, source: str) -> None:
        self.toks: list[tuple[str, str, int]] = []
        pos, line = 0, 1
        while pos < len(source):
            m = TOKEN.match(source, pos)
            if not m:
                raise syntax_error(f"unexpected symbol near `{source[pos:pos + 10].strip()}'", line)
            kind = m.lastgroup
            text = m.group(kind)
            if kind != "ws":
                if kind == "name" and text in KEYWORDS:
                    kind = "kw"
                self.toks.append((kind, text, line))
            line += text.count("\n")
            pos = m.end()
        self.toks.append(("eof", "<eof>", line))
        self.i = 0

    # token helpers
    def peek(self, k: int = 0) -> tuple[str, str, int]:
        return self.toks[min(self.i + k, len(self.toks) - 1)]

    def check(self, text: str) -> bool:
        kind, t, _ = self.peek()
        return t == text and kind in ("op", "kw")

    def accept(self, text: str) -> bool:
        if self.check(text):
            self.i += 1
            return True
        return False

    def expect(self, text: str) -> None:
        if not self.accept(text):
            _, t, line = self.peek()
            raise syntax_error(f"`{text}' expected near `{t}'", line)

    def name(self) -> str:
        kind, t, line = self.peek()
        if kind != "name":
            raise syntax_error(f"<name> expected near `{t}'", line)
        self.i += 1
        return t

    # grammar
    def chunk(self) -> list:
        body = self.block()
        if self.peek()[0] != "eof":
            _, t, line = self.peek()
            raise syntax_error(f"unexpected symbol near `{t}'", line)
        return body

    def block(self) -> list:
        stmts = []
        while True:
            while self.accept(";"):
                pass
            kind, t, _ = self.peek()
            if kind == "eof" or (kind == "kw" and t in ("end", "else", "elseif", "until")):
                return stmts
            if kind == "kw" and t == "return":
                self.i += 1
                line = self.peek()[2]
                values = [] if self.check("end") or self.peek()[0] == "eof" or self.check(";") else self.exprlist()
                self.accept(";")
                stmts.append(("return", values, line))
                return stmts
            stmts.append(self.statement())

    def statement(self) -> tuple:
        kind, t, line = self.peek()
        if kind == "kw":
            self.i += 1
            if t == "if":
                arms = []
                cond = self.expr()
                self.expect("then")
                arms.append((cond, self.block()))
                orelse = None
                while True:
                    if self.accept("elseif"):
                        c = self.expr()
                        self.expect("then")
                        arms.append((c, self.block()))
                    elif self.accept("else"):
                        orelse = self.block()
                        self.expect("end")
                        break
                    else:
                        self.expect("end")
                        break
                return ("if", arms, orelse, line)
            if t == "while":
                cond = self.expr()
                self.expect("do")
                body = self.block()
                self.expect("end")
                return ("while", cond, body, line)
            if t == "repeat":
                body = self.block()
                self.expect("until")
                return ("repeat", body, self.expr(), line)
            if t == "do":
                body = self.block()
                self.expect("end")
                return ("do", body, line)
            if t == "for":
                n1 = self.name()
                if self.accept("="):
                    start = self.expr()
                    self.expect(",")
                    stop = self.expr()
                    step = self.expr() if self.accept(",") else ("const", 1.0)
                    self.expect("do")
                    body = self.block()
                    self.expect("end")
                    return ("fornum", n1, start, stop, step, body, line)
                names = [n1]
                while self.accept(","):
                    names.append(self.name())
                self.expect("in")
                exprs = self.exprlist()
                self.expect("do")
                body = self.block()
                self.expect("end")
                return ("forin", names, exprs, body, line)
            if t == "function":
                path = [self.name()]
                method = False
                while self.accept("."):
                    path.append(self.name())
                if self.accept(":"):
                    path.append(self.name())
                    method = True
                fn = self.funcbody(".".join(path), method)
                return ("funcstat", path, fn, line)
            if t == "local":
                if self.accept("function"):
                    name = self.name()
                    return ("localfunc", name, self.funcbody(name, False), line)
                names = [self.name()]
                while self.accept(","):
                    names.append(self.name())
                values = self.exprlist() if self.accept("=") else []
                return ("local", names, values, line)
            if t == "break":
                return ("break", line)
            raise syntax_error(f"unexpected symbol near `{t}'", line)
        target = self.suffixed()
        if self.check("=") or self.check(","):
            targets = [target]
            while self.accept(","):
                targets.append(self.suffixed())
            self.expect("=")
            for tg in targets:
                if tg[0] not in ("var", "index"):
                    raise syntax_error("cannot assign to this expression", line)
            return ("assign", targets, self.exprlist(), line)
        if target[0] not in ("call", "method"):
            _, t2, l2 = self.peek()
            raise syntax_error(f"`=' expected near `{t2}'", l2)
        return ("callstat", target, line)

    def funcbody(self, name: str, method: bool) -> tuple:
        self.expect("(")
        params = ["self"] if method else []
        if not self.check(")"):
            params.append(self.name())
            while self.accept(","):
                params.append(self.name())
        self.expect(")")
        body = self.block()
        self.expect("end")
        return ("function", params, body, name)

    def exprlist(self) -> list:
        values = [self.expr()]
        while self.accept(","):
            values.append(self.expr())
        return values

    def expr(self, limit: int = 0) -> tuple:
        kind, t, line = self.peek()
        if (kind == "kw" and t == "not") or (kind == "op" and t in ("-", "#")):
            self.i += 1
            left: tuple = ("unop", t, self.expr(UNARY_PRIORITY), line)
        else:
            left = self.simple()
        while True:
            kind, op, line = self.peek()
            prio = BINARY.get(op) if kind in ("op", "kw") else None
            if prio is None or prio <= limit:
                return left
            self.i += 1
            right = self.expr(prio - 1 if op in RIGHT else prio)
            left = ("binop", op, left, right, line)

    def simple(self) -> tuple:
        kind, t, line = self.peek()
        if kind == "num":
            self.i += 1
            return ("const", float(int(t, 16)) if t.lower().startswith("0x") else float(t))
        if kind == "str":
            self.i += 1
            return ("const", _unescape(t[1:-1]))
        if kind == "kw" and t in ("nil", "true", "false"):
            self.i += 1
            return ("const", {"nil": None, "true": True, "false": False}[t])
        if kind == "kw" and t == "function":
            self.i += 1
            return self.funcbody("anonymous", False)
        if kind == "op" and t == "{":
            return self.table()
        return self.suffixed()

    def table(self) -> tuple:
        self.expect("{")
        items = []
        while not self.check("}"):
            if self.accept("["):
                k = self.expr()
                self.expect("]")
                self.expect("=")
                items.append((k, self.expr()))
            elif self.peek()[0] == "name" and self.peek(1)[1] == "=":
                k = ("const", self.name())
                self.expect("=")
                items.append((k, self.expr()))
            else:
                items.append((None, self.expr()))
            if not (self.accept(",") or self.accept(";")):
                break
        self.expect("}")
        return ("table", items)

    def suffixed(self) -> tuple:
        kind, t, line = self.peek()
        if kind == "name":
            self.i += 1
            e: tuple = ("var", t, line)
        elif self.accept("("):
            e = ("paren", self.expr())
            self.expect(")")
        else:
            raise syntax_error(f"unexpected symbol near `{t}'", line)
        while True:
            kind, t, line = self.peek()
            if self.accept("."):
                e = ("index", e, ("const", self.name()), line)
            elif self.accept("["):
                k = self.expr()
                self.expect("]")
                e = ("index", e, k, line)
            elif self.accept(":"):
                name = self.name()
                e = ("method", e, name, self.callargs(), line)
            elif self.check("(") or kind == "str" or self.check("{"):
                e = ("call", e, self.callargs(), line)
            else:
                return e

    def callargs(self) -> list:
        kind, t, _ = self.peek()
        if kind == "str":
            self.i += 1
            return [("const", _unescape(t[1:-1]))]
        if self.check("{"):
            return [self.table()]
        self.expect("(")
        if self.accept(")"):
            return []
        args = self.exprlist()
        self.expect(")")
        return args


def _unescape(s: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'"}.get(
        m.group(1), m.group(1)), s)


# -- evaluation -----------------------------------------------------------------------------
def type_name(v: Any) -> str:
    if v is None:
        return "nil"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, (Table, Node)):
        return "table"
    return "function"


def truthy(v: Any) -> bool:
    return v is not None and v is not False


class Interpreter:
    """Runs chunks in one global environment (``globals`` is a :class:`Table`)."""

    def __init__(self, globals_: Table) -> None:
        self.globals = globals_
        self.steps = 0

    def run(self, source: str) -> None:
        body = Parser(source).chunk()
        self.steps = 0
        try:
            self.block(body, Scope())
        except _Return:
            pass
        except _Break:
            raise syntax_error("no loop to break") from None
        except RecursionError:
            raise runtime_error("stack overflow") from None

    # statements
    def block(self, stmts: list, scope: Scope) -> None:
        for s in stmts:
            self.steps += 1
            if self.steps > MAX_STEPS:
                raise runtime_error("script aborted: instruction budget exceeded", s[-1])
            getattr(self, "s_" + s[0])(s, scope)

    def s_local(self, s: tuple, scope: Scope) -> None:
        values = self.values(s[2], scope)
        for i, n in enumerate(s[1]):
            scope.declare(n, values[i] if i < len(values) else None)

    def s_assign(self, s: tuple, scope: Scope) -> None:
        values = self.values(s[2], scope)
        for i, tg in enumerate(s[1]):
            v = values[i] if i < len(values) else None
            if tg[0] == "var":
                found = scope.find(tg[1])
                if found is not None:
                    found.vars[tg[1]] = v
                else:
                    self.globals.set(tg[1], v)
            else:
                obj = self.eval(tg[1], scope)
                self.setindex(obj, self.eval(tg[2], scope), v, tg[3], tg[1])

    def s_callstat(self, s: tuple, scope: Scope) -> None:
        self.multi(s[1], scope)

    def s_do(self, s: tuple, scope: Scope) -> None:
        self.block(s[1], Scope(scope))

    def s_if(self, s: tuple, scope: Scope) -> None:
        for cond, body in s[1]:
            if truthy(self.eval(cond, scope)):
                self.block(body, Scope(scope))
                return
        if s[2] is not None:
            self.block(s[2], Scope(scope))

    def s_while(self, s: tuple, scope: Scope) -> None:
        try:
            while truthy(self.eval(s[1], scope)):
                self.steps += 1
                if self.steps > MAX_STEPS:
                    raise runtime_error("script aborted: instruction budget exceeded", s[3])
                self.block(s[2], Scope(scope))
        except _Break:
            pass

    def s_repeat(self, s: tuple, scope: Scope) -> None:
        try:
            while True:
                inner = Scope(scope)
                self.block(s[1], inner)
                if truthy(self.eval(s[2], inner)):
                    break
        except _Break:
            pass

    def s_fornum(self, s: tuple, scope: Scope) -> None:
        _, name, e1, e2, e3, body, line = s
        start, stop, step = (self.number(self.eval(e, scope), line, "'for' initial value") for e in (e1, e2, e3))
        if step == 0:
            raise runtime_error("'for' step is zero", line)
        i = start
        try:
            while (i <= stop) if step > 0 else (i >= stop):
                inner = Scope(scope)
                inner.declare(name, i)
                self.block(body, inner)
                i += step
        except _Break:
            pass

    def s_forin(self, s: tuple, scope: Scope) -> None:
        _, names, exprs, body, line = s
        vals = self.values(exprs, scope) + [None, None, None]
        f, state, ctl = vals[:3]
        try:
            while True:
                r = self.call(f, [state, ctl], line) + [None] * len(names)
                if r[0] is None:
                    break
                ctl = r[0]
                inner = Scope(scope)
                for i, n in enumerate(names):
                    inner.declare(n, r[i])
                self.block(body, inner)
        except _Break:
            pass

    def s_funcstat(self, s: tuple, scope: Scope) -> None:
        _, path, fn, line = s
        f = self.eval(fn, scope)
        if len(path) == 1:
            found = scope.find(path[0])
            (found.vars.__setitem__(path[0], f) if found else self.globals.set(path[0], f))
            return
        obj = self.eval(("var", path[0], line), scope)
        for key in path[1:-1]:
            obj = self.index(obj, key, line, key)
        self.setindex(obj, path[-1], f, line, ("var", path[-2], line))

    def s_localfunc(self, s: tuple, scope: Scope) -> None:
        scope.declare(s[1], None)
        scope.vars[s[1]] = self.eval(s[2], scope)

    def s_return(self, s: tuple, scope: Scope) -> None:
        raise _Return(self.values(s[1], scope))

    def s_break(self, s: tuple, scope: Scope) -> None:
        raise _Break()

    # expressions
    def values(self, exprs: list, scope: Scope) -> list[Any]:
        """Values of an expression list; the last one may expand to several."""
        out: list[Any] = []
        for i, e in enumerate(exprs):
            if i == len(exprs) - 1 and e[0] in ("call", "method"):
                out.extend(self.multi(e, scope))
            else:
                out.append(self.eval(e, scope))
        return out

    def multi(self, e: tuple, scope: Scope) -> list[Any]:
        if e[0] == "call":
            f = self.eval(e[1], scope)
            if f is None or not callable(f):
                raise runtime_error(f"attempt to call {self.describe(e[1])} (a {type_name(f)} value)", e[3])
            return self.call(f, self.values(e[2], scope), e[3])
        if e[0] == "method":
            obj = self.eval(e[1], scope)
            f = self.index(obj, e[2], e[4], e[1])
            if f is None or not callable(f):
                raise runtime_error(f"attempt to call method `{e[2]}' (a {type_name(f)} value)", e[4])
            return self.call(f, [obj] + self.values(e[3], scope), e[4])
        return [self.eval(e, scope)]

    def call(self, f: Any, args: list[Any], line: int) -> list[Any]:
        if not callable(f):
            raise runtime_error(f"attempt to call a {type_name(f)} value", line)
        try:
            r = f(*args)
        except LuaError:
            raise
        except (TypeError, ValueError, ZeroDivisionError, OverflowError) as exc:
            raise runtime_error(f"bad argument ({exc})", line) from None
        return r if isinstance(r, list) else ([] if r is None else [r])

    def describe(self, e: tuple) -> str:
        if e[0] == "var":
            return f"global `{e[1]}'"
        if e[0] == "index" and e[2][0] == "const":
            return f"field `{e[2][1]}'"
        return "a value"

    def eval(self, e: tuple, scope: Scope) -> Any:
        k = e[0]
        if k == "const":
            return e[1]
        if k == "var":
            found = scope.find(e[1])
            return found.vars[e[1]] if found is not None else self.globals.get(e[1])
        if k == "index":
            return self.index(self.eval(e[1], scope), self.eval(e[2], scope), e[3], e[1])
        if k in ("call", "method"):
            r = self.multi(e, scope)
            return r[0] if r else None
        if k == "paren":
            return self.eval(e[1], scope)
        if k == "binop":
            return self.binop(e, scope)
        if k == "unop":
            v = self.eval(e[2], scope)
            if e[1] == "not":
                return not truthy(v)
            if e[1] == "-":
                return -self.number(v, e[3], "arithmetic")
            if isinstance(v, str):
                return float(len(v))
            if isinstance(v, Table):
                return v.length()
            if isinstance(v, Node) and "n" in v.props:
                return v.get("n")
            raise runtime_error(f"attempt to get length of a {type_name(v)} value", e[3])
        if k == "function":
            return Function(e[1], e[2], scope, self, e[3])
        if k == "table":
            t = Table()
            n = 0
            for key, ve in e[1]:
                if key is None:
                    n += 1
                    t.set(float(n), self.eval(ve, scope))
                else:
                    t.set(self.eval(key, scope), self.eval(ve, scope))
            return t
        raise runtime_error(f"cannot evaluate {k}")

    def index(self, obj: Any, key: Any, line: int, src: Any = None) -> Any:
        if isinstance(obj, (Table, Node)):
            return obj.get(key)
        what = self.describe(src) if isinstance(src, tuple) else f"`{src}'"
        raise runtime_error(f"attempt to index {what} (a {type_name(obj)} value)", line)

    def setindex(self, obj: Any, key: Any, value: Any, line: int, src: Any = None) -> None:
        if isinstance(obj, (Table, Node)):
            obj.set(key, value)
            return
        what = self.describe(src) if isinstance(src, tuple) else "a value"
        raise runtime_error(f"attempt to index {what} (a {type_name(obj)} value)", line)

    @staticmethod
    def number(v: Any, line: int, what: str) -> float:
        if isinstance(v, bool) or v is None:
            raise runtime_error(f"attempt to perform {what} on a {type_name(v)} value", line)
        if isinstance(v, (int, float)):
            return float(v)
        if isinstance(v, str):
            try:
                return float(v)
            except ValueError:
                pass
        raise runtime_error(f"attempt to perform {what} on a {type_name(v)} value", line)

    def binop(self, e: tuple, scope: Scope) -> Any:
        _, op, le, re_, line = e
        if op == "and":
            a = self.eval(le, scope)
            return self.eval(re_, scope) if truthy(a) else a
        if op == "or":
            a = self.eval(le, scope)
            return a if truthy(a) else self.eval(re_, scope)
        a, b = self.eval(le, scope), self.eval(re_, scope)
        if op == "==":
            return _eq(a, b)
        if op == "~=":
            return not _eq(a, b)
        if op == "..":
            for v in (a, b):
                if not isinstance(v, (str, int, float)) or isinstance(v, bool):
                    raise runtime_error(f"attempt to concatenate a {type_name(v)} value", line)
            return tostring(a) + tostring(b)
        if op in ("<", ">", "<=", ">="):
            if not ((isinstance(a, str) and isinstance(b, str)) or
                    (type_name(a) == "number" and type_name(b) == "number")):
                raise runtime_error(f"attempt to compare {type_name(a)} with {type_name(b)}", line)
            return {"<": a < b, ">": a > b, "<=": a <= b, ">=": a >= b}[op]
        x, y = self.number(a, line, "arithmetic"), self.number(b, line, "arithmetic")
        if op == "+":
            return x + y
        if op == "-":
            return x - y
        if op == "*":
            return x * y
        if op == "/":
            return x / y if y else (math.copysign(math.inf, x) if x else math.nan)
        if op == "%":
            return x - math.floor(x / y) * y if y else math.nan
        try:
            return x ** y
        except (OverflowError, ZeroDivisionError):
            return math.inf
        except ValueError:
            return math.nan


def _eq(a: Any, b: Any) -> bool:
    if type_name(a) != type_name(b):
        return False
    if isinstance(a, (Table, Node)) or callable(a):
        return a is b
    return a == b


def number_text(v: float, precision: int = 6) -> str:
    return "%.*e" % (max(1, precision) - 1, v)


def tostring(v: Any, precision: int = 6) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "nil"
    if isinstance(v, (int, float)):
        return number_text(float(v), precision)
    if isinstance(v, str):
        return v
    return f"{type_name(v)}: 0x{id(v) & 0xffffff:06x}"


def standard_library(out: Callable[[str], None], precision: Callable[[], int]) -> dict[str, Any]:
    """Lua built-ins the TSP provides (a subset)."""

    def lua_print(*args: Any) -> None:
        out("\t".join(tostring(a, precision()) for a in args))

    def ipairs(t: Any) -> list[Any]:
        def step(tbl: Any, i: Any) -> list[Any]:
            i = float(i) + 1
            v = tbl.get(i)
            return [] if v is None else [i, v]
        return [step, t, 0.0]

    def pairs(t: Any) -> list[Any]:
        keys = list(t.items.keys()) if isinstance(t, Table) else []

        def step(tbl: Any, k: Any) -> list[Any]:
            idx = 0 if k is None else keys.index(Table._key(k)) + 1
            while idx < len(keys) and keys[idx] not in tbl.items:
                idx += 1
            return [] if idx >= len(keys) else [keys[idx], tbl.items[keys[idx]]]
        return [step, t, None]

    def tonumber(v: Any, base: Any = None) -> Any:
        try:
            return float(int(str(v), int(base))) if base is not None else float(v)
        except (TypeError, ValueError):
            return None

    def fmt(f: str, *args: Any) -> str:
        conv = []
        for a in args:
            conv.append(a if not isinstance(a, bool) else tostring(a))
        spec = re.findall(r"%[-+ #0]*\d*(?:\.\d+)?([diouxXeEfgGqsc%])", f)
        vals, j = [], 0
        for c in spec:
            if c == "%":
                continue
            v = conv[j] if j < len(conv) else None
            vals.append(int(v) if c in "diouxXc" else (tostring(v) if c in "sq" else float(v)))
            j += 1
        return f.replace("%q", "%s") % tuple(vals)

    def math_fn(fn: Callable[..., float]) -> Callable[..., float]:
        return lambda *a: float(fn(*(float(x) for x in a)))

    m = Table({k: math_fn(f) for k, f in {
        "abs": abs, "floor": math.floor, "ceil": math.ceil, "sqrt": math.sqrt, "exp": math.exp, "log": math.log,
        "log10": math.log10, "sin": math.sin, "cos": math.cos, "tan": math.tan, "pow": math.pow,
        "min": min, "max": max, "fmod": math.fmod, "rad": math.radians, "deg": math.degrees}.items()})
    m.set("pi", math.pi)
    m.set("huge", math.inf)
    s = Table({"format": fmt, "len": lambda v: float(len(v)), "sub": lambda v, i, j=-1: _sub(v, i, j),
               "upper": lambda v: v.upper(), "lower": lambda v: v.lower(), "rep": lambda v, n: v * int(n)})
    t = Table({"insert": _tinsert, "getn": lambda tb: tb.length(),
               "concat": lambda tb, sep="": sep.join(tostring(tb.get(float(i))) for i in range(1, int(tb.length()) + 1))})
    return {"print": lua_print, "ipairs": ipairs, "pairs": pairs, "tonumber": tonumber,
            "tostring": lambda v: tostring(v, precision()), "type": type_name, "math": m, "string": s, "table": t,
            "error": lambda msg="error": (_ for _ in ()).throw(runtime_error(tostring(msg))),
            "assert": lambda v, msg="assertion failed!": v if truthy(v) else
            (_ for _ in ()).throw(runtime_error(tostring(msg)))}


def _sub(v: str, i: float, j: float = -1) -> str:
    n = len(v)
    i, j = int(i), int(j)
    i = n + i + 1 if i < 0 else max(i, 1)
    j = n + j + 1 if j < 0 else min(j, n)
    return v[i - 1:j]


def _tinsert(tb: Table, *args: Any) -> None:
    if len(args) == 1:
        tb.set(tb.length() + 1, args[0])
    else:
        pos, v = int(args[0]), args[1]
        n = int(tb.length())
        for k in range(n, pos - 1, -1):
            tb.set(float(k + 1), tb.get(float(k)))
        tb.set(float(pos), v)
