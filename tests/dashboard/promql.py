"""A small PromQL evaluator: exactly what envoy/grafana/llm-capacity.json uses.

Supported: vector selectors with `=`, `!=`, `=~`, `!~` matchers, range
selectors (`[10s]`, `[1m]`), `rate`, `increase`, `histogram_quantile`, the
aggregations `sum`, `max`, `min`, `avg`, `count` with `by (...)`, and `+ - * /`
between scalars and vectors (vector with vector: one-to-one on identical
labels). Anything else is a parse error, so a dashboard query this module cannot
evaluate fails loudly instead of rendering something else.

The semantics follow Prometheus: instant selectors take the latest sample within
a 5 minute lookback; `rate`/`increase` use Prometheus' extrapolation (counter
resets, extrapolation to the window's edges, never below zero); range windows
are left-open `(t - range, t]`; `histogram_quantile` interpolates linearly inside
the bucket (classic histograms).

Grafana's variables are expanded first by :func:`expand` (`$route`, `${route}`,
`$__rate_interval`, `$__range`, ...).

Data comes from /stats/prometheus scrapes (:func:`parse_exposition`) collected in
a :class:`Store`.
"""

from __future__ import annotations

import bisect
import math
import re
from dataclasses import dataclass, field

LOOKBACK_S = 300.0
AGGREGATIONS = {"sum", "max", "min", "avg", "count"}
FUNCTIONS = {"rate", "increase", "histogram_quantile"}


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------

Labels = tuple[tuple[str, str], ...]  # sorted (name, value) pairs, without __name__


def labels_key(d: dict[str, str]) -> Labels:
    return tuple(sorted(d.items()))


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_exposition(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Samples of a Prometheus text exposition: (name, labels, value)."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = {k: v.replace('\\"', '"').replace("\\\\", "\\") for k, v in _LABEL.findall(m.group(2) or "")}
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        out.append((m.group(1), labels, value))
    return out


@dataclass
class Series:
    times: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)


class Store:
    """Scraped samples: name -> labels -> time series."""

    def __init__(self):
        self.series: dict[str, dict[Labels, Series]] = {}
        self.scrape_times: list[float] = []

    def add(self, t: float, samples) -> None:
        self.scrape_times.append(t)
        for name, labels, value in samples:
            s = self.series.setdefault(name, {}).setdefault(labels_key(labels), Series())
            s.times.append(t)
            s.values.append(value)

    def add_exposition(self, t: float, text: str) -> None:
        self.add(t, parse_exposition(text))

    def names(self) -> set[str]:
        return set(self.series)


# ---------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Num:
    value: float


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str  # = != =~ !~
    value: str

    def matches(self, v: str) -> bool:
        if self.op == "=":
            return v == self.value
        if self.op == "!=":
            return v != self.value
        full = re.fullmatch(self.value, v) is not None
        return full if self.op == "=~" else not full


@dataclass(frozen=True)
class Sel:
    name: str
    matchers: tuple[Matcher, ...]
    range_s: float | None = None  # a range selector when set


@dataclass(frozen=True)
class Agg:
    op: str
    by: tuple[str, ...] | None  # None: no grouping (one result)
    expr: object


@dataclass(frozen=True)
class Call:
    fn: str
    args: tuple


@dataclass(frozen=True)
class Bin:
    op: str
    left: object
    right: object


class ParseError(ValueError):
    pass


_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<dur>\d+(?:\.\d+)?(?:ms|s|m|h|d|w|y)(?![a-zA-Z0-9_]))
  | (?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>=~|!~|!=|==|[-+*/(){}\[\],=])
""", re.X)

_DUR = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def duration_seconds(s: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)", s)
    if not m:
        raise ParseError(f"bad duration {s!r}")
    return float(m.group(1)) * _DUR[m.group(2)]


def tokenize(src: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(src):
        m = _TOKEN.match(src, pos)
        if not m:
            raise ParseError(f"unexpected {src[pos:pos + 20]!r} at {pos} in {src!r}")
        pos = m.end()
        kind = m.lastgroup
        if kind != "ws":
            out.append((kind, m.group()))
    return out


class _Parser:
    def __init__(self, src: str):
        self.src = src
        self.toks = tokenize(src)
        self.i = 0

    def peek(self, k: int = 0):
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else ("eof", "")

    def take(self, value: str | None = None, kind: str | None = None) -> str:
        t = self.peek()
        if (value is not None and t[1] != value) or (kind is not None and t[0] != kind):
            raise ParseError(f"expected {value or kind}, got {t[1] or 'end'!r} in {self.src!r}")
        self.i += 1
        return t[1]

    def parse(self):
        e = self.additive()
        if self.peek()[0] != "eof":
            raise ParseError(f"unexpected {self.peek()[1]!r} in {self.src!r}")
        return e

    def additive(self):
        e = self.multiplicative()
        while self.peek() in (("op", "+"), ("op", "-")):
            op = self.take()
            e = Bin(op, e, self.multiplicative())
        return e

    def multiplicative(self):
        e = self.unary()
        while self.peek() in (("op", "*"), ("op", "/")):
            op = self.take()
            e = Bin(op, e, self.unary())
        return e

    def unary(self):
        if self.peek() == ("op", "-"):
            self.take()
            return Bin("*", Num(-1.0), self.unary())
        return self.primary()

    def labels_list(self) -> tuple[str, ...]:
        self.take("(")
        out = []
        while self.peek()[1] != ")":
            out.append(self.take(kind="ident"))
            if self.peek()[1] == ",":
                self.take(",")
        self.take(")")
        return tuple(out)

    def primary(self):
        kind, val = self.peek()
        if kind == "num":
            self.take()
            return Num(float(val))
        if val == "(":
            self.take("(")
            e = self.additive()
            self.take(")")
            return e
        if kind != "ident":
            raise ParseError(f"unexpected {val or 'end'!r} in {self.src!r}")
        if val in AGGREGATIONS and self.peek(1)[1] in ("(", "by", "without"):
            self.take()
            by = None
            if self.peek()[1] == "without":
                raise ParseError(f"'without' is not supported: {self.src!r}")
            if self.peek()[1] == "by":
                self.take("by")
                by = self.labels_list()
            self.take("(")
            inner = self.additive()
            self.take(")")
            if self.peek()[1] == "by":
                if by is not None:
                    raise ParseError(f"two by clauses in {self.src!r}")
                self.take("by")
                by = self.labels_list()
            return Agg(val, by, inner)
        if self.peek(1)[1] == "(":
            if val not in FUNCTIONS:
                raise ParseError(f"unsupported function {val!r} in {self.src!r}")
            self.take()
            self.take("(")
            args = [self.additive()]
            while self.peek()[1] == ",":
                self.take(",")
                args.append(self.additive())
            self.take(")")
            return self.check_call(Call(val, tuple(args)))
        return self.selector()

    def check_call(self, c: Call) -> Call:
        if c.fn in ("rate", "increase"):
            if len(c.args) != 1 or not isinstance(c.args[0], Sel) or c.args[0].range_s is None:
                raise ParseError(f"{c.fn} takes one range selector: {self.src!r}")
        elif c.fn == "histogram_quantile":
            if len(c.args) != 2 or not isinstance(c.args[0], Num):
                raise ParseError(f"histogram_quantile takes a number and a vector: {self.src!r}")
        return c

    def selector(self) -> Sel:
        name = self.take(kind="ident")
        matchers = []
        if self.peek()[1] == "{":
            self.take("{")
            while self.peek()[1] != "}":
                label = self.take(kind="ident")
                op = self.take(kind="op")
                if op not in ("=", "!=", "=~", "!~"):
                    raise ParseError(f"bad matcher operator {op!r} in {self.src!r}")
                raw = self.take(kind="str")
                matchers.append(Matcher(label, op, _unquote(raw)))
                if self.peek()[1] == ",":
                    self.take(",")
            self.take("}")
        range_s = None
        if self.peek()[1] == "[":
            self.take("[")
            range_s = duration_seconds(self.take(kind="dur"))
            self.take("]")
        return Sel(name, tuple(matchers), range_s)


def _unquote(raw: str) -> str:
    body = raw[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)


def parse(src: str):
    return _Parser(src).parse()


def expand(expr: str, variables: dict[str, str]) -> str:
    """Grafana variable interpolation: `$name` and `${name}` (longest names first)."""
    def sub(m):
        name = m.group(1) or m.group(2)
        if name not in variables:
            raise KeyError(f"undefined variable ${name} in {expr!r}")
        return variables[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, expr)


# ---------------------------------------------------------------------------
# Static analysis (used by the dashboard test)
# ---------------------------------------------------------------------------

def walk(node):
    yield node
    if isinstance(node, Agg):
        yield from walk(node.expr)
    elif isinstance(node, Call):
        for a in node.args:
            yield from walk(a)
    elif isinstance(node, Bin):
        yield from walk(node.left)
        yield from walk(node.right)


def selectors_with_grouping(node, grouping: tuple[str, ...] = ()):
    """(selector, labels that enclosing aggregations group by) for every selector."""
    if isinstance(node, Sel):
        yield node, grouping
    elif isinstance(node, Agg):
        yield from selectors_with_grouping(node.expr, grouping + (node.by or ()))
    elif isinstance(node, Call):
        for a in node.args:
            yield from selectors_with_grouping(a, grouping)
    elif isinstance(node, Bin):
        yield from selectors_with_grouping(node.left, grouping)
        yield from selectors_with_grouping(node.right, grouping)


def output_labels(node) -> set[str] | None:
    """Labels the result series carry, when known statically (None: a selector's own)."""
    if isinstance(node, Num):
        return set()
    if isinstance(node, Sel):
        return None
    if isinstance(node, Agg):
        return set(node.by or ())
    if isinstance(node, Call):
        inner = output_labels(node.args[-1])
        if node.fn == "histogram_quantile" and inner is not None:
            inner = inner - {"le"}
        return inner
    if isinstance(node, Bin):
        left, right = output_labels(node.left), output_labels(node.right)
        if isinstance(node.left, Num):
            return right
        if isinstance(node.right, Num):
            return left
        return left if left is not None else right
    raise TypeError(node)


# ---------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------

Vector = dict  # Labels -> float


def _selected(store: Store, sel: Sel):
    for key, series in store.series.get(sel.name, {}).items():
        d = dict(key)
        if all(m.matches(d.get(m.label, "")) for m in sel.matchers):
            yield key, series


def _instant(store: Store, sel: Sel, t: float) -> Vector:
    out = {}
    for key, s in _selected(store, sel):
        i = bisect.bisect_right(s.times, t) - 1
        if i >= 0 and t - s.times[i] <= LOOKBACK_S:
            out[key] = s.values[i]
    return out


def _extrapolated(times, values, range_start, range_end, range_s, is_rate):
    """Prometheus' extrapolatedRate for counters."""
    if len(values) < 2:
        return None
    result = values[-1] - values[0]
    last = 0.0
    for v in values:
        if v < last:
            result += last
        last = v
    to_start = times[0] - range_start
    to_end = range_end - times[-1]
    sampled = times[-1] - times[0]
    if sampled <= 0:
        return None
    avg_step = sampled / (len(values) - 1)
    if result > 0 and values[0] >= 0:
        to_zero = sampled * (values[0] / result)
        to_start = min(to_start, to_zero)
    threshold = avg_step * 1.1
    interval = sampled
    interval += to_start if to_start < threshold else avg_step / 2
    interval += to_end if to_end < threshold else avg_step / 2
    result *= interval / sampled
    return result / range_s if is_rate else result


def _range_fn(store: Store, call: Call, t: float) -> Vector:
    sel: Sel = call.args[0]
    start = t - sel.range_s
    out = {}
    for key, s in _selected(store, sel):
        lo = bisect.bisect_right(s.times, start)  # left-open window
        hi = bisect.bisect_right(s.times, t)
        v = _extrapolated(s.times[lo:hi], s.values[lo:hi], start, t, sel.range_s, call.fn == "rate")
        if v is not None:
            out[key] = v
    return out


def bucket_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' classic histogram quantile over (upper bound, cumulative count)."""
    if math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    merged: dict[float, float] = {}
    for ub, c in buckets:
        merged[ub] = merged.get(ub, 0.0) + c
    bs = sorted(merged.items())
    if not bs or bs[-1][0] != math.inf or len(bs) < 2:
        return math.nan
    mono, hi = [], 0.0  # counts must not decrease
    for ub, c in bs:
        hi = max(hi, c)
        mono.append((ub, hi))
    bs = mono
    total = bs[-1][1]
    if total == 0:
        return math.nan
    rank = q * total
    b = next((i for i in range(len(bs) - 1) if bs[i][1] >= rank), len(bs) - 1)
    if b == len(bs) - 1:
        return bs[-2][0]
    if b == 0 and bs[0][0] <= 0:
        return bs[0][0]
    start, end, count = 0.0, bs[b][0], bs[b][1]
    if b > 0:
        start = bs[b - 1][0]
        count -= bs[b - 1][1]
        rank -= bs[b - 1][1]
    return start + (end - start) * (rank / count) if count > 0 else end


def _histogram_quantile(q: float, vec: Vector) -> Vector:
    groups: dict[Labels, list[tuple[float, float]]] = {}
    for key, v in vec.items():
        d = dict(key)
        if "le" not in d:
            continue
        le = d.pop("le")
        groups.setdefault(labels_key(d), []).append((float(le), v))
    return {k: bucket_quantile(q, b) for k, b in groups.items()}


def _aggregate(op: str, by, vec: Vector) -> Vector:
    groups: dict[Labels, list[float]] = {}
    for key, v in vec.items():
        d = dict(key)
        g = labels_key({k: d[k] for k in (by or ()) if k in d})
        groups.setdefault(g, []).append(v)
    fn = {"sum": sum, "max": max, "min": min, "avg": lambda xs: sum(xs) / len(xs), "count": len}[op]
    return {k: float(fn(vs)) for k, vs in groups.items()}


def _arith(op: str, a: float, b: float) -> float:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if b == 0:
        return math.nan if a == 0 else math.copysign(math.inf, a)
    return a / b


def evaluate(node, store: Store, t: float):
    """A float (scalar) or a Vector at time t."""
    if isinstance(node, Num):
        return node.value
    if isinstance(node, Sel):
        if node.range_s is not None:
            raise ParseError("a range selector outside rate/increase")
        return _instant(store, node, t)
    if isinstance(node, Call):
        if node.fn in ("rate", "increase"):
            return _range_fn(store, node, t)
        vec = evaluate(node.args[1], store, t)
        return _histogram_quantile(node.args[0].value, vec)
    if isinstance(node, Agg):
        vec = evaluate(node.expr, store, t)
        if not isinstance(vec, dict):
            raise ParseError(f"{node.op} of a scalar")
        return _aggregate(node.op, node.by, vec)
    if isinstance(node, Bin):
        a, b = evaluate(node.left, store, t), evaluate(node.right, store, t)
        if not isinstance(a, dict) and not isinstance(b, dict):
            return _arith(node.op, a, b)
        if not isinstance(a, dict):
            return {k: _arith(node.op, a, v) for k, v in b.items()}
        if not isinstance(b, dict):
            return {k: _arith(node.op, v, b) for k, v in a.items()}
        return {k: _arith(node.op, v, b[k]) for k, v in a.items() if k in b}
    raise TypeError(node)


def query_range(expr: str, store: Store, start: float, end: float, step: float) -> dict[Labels, list[tuple[float, float]]]:
    """Like /api/v1/query_range: each series' (t, value) points."""
    node = parse(expr)
    out: dict[Labels, list[tuple[float, float]]] = {}
    n = int(math.floor((end - start) / step + 1e-9))
    for i in range(n + 1):
        t = start + i * step
        v = evaluate(node, store, t)
        if not isinstance(v, dict):
            v = {(): v}
        for k, x in v.items():
            out.setdefault(k, []).append((t, x))
    return out


def legend(fmt: str, labels: Labels, default: str = "") -> str:
    """Grafana's legendFormat: {{label}} replaced by the series' label value."""
    d = dict(labels)
    if not fmt:
        return default or ("{" + ", ".join(f'{k}="{v}"' for k, v in labels) + "}")
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: d.get(m.group(1), ""), fmt)
