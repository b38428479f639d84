"""An in-memory stand-in for a RethinkDB server, for the terms the tqueues store sends.

It evaluates the wire form of a query (what the official driver would send) with ReQL's
documented semantics: its sort order across types (with ``r.minval``/``r.maxval``), secondary
indexes computed by their functions (documents whose index value is null or errors are not
indexed), ``between`` bounds, ``order_by(index=)`` only on the index a ``between`` used, deep
``merge`` in ``update``, write results with ``return_changes`` (``True`` or ``"always"``),
``insert`` conflict strategies, single-document atomicity (a query runs without interleaving;
concurrent queries interleave between queries), and the refusal of non-deterministic write
functions. Every term is checked for its number of arguments and the names of its options,
so a typo fails here rather than on a real server.

It is a test double with limits: one server per instance, no sharding, no durability, and
numbers come back as the wire sends them (whole doubles as ints). It answers the queries of
``tqueues/store/rethinkdb.py`` and little else; a term it does not know raises.

Developer use: ``TQUEUES_TEST_BACKENDS=rethinkdb-fake pytest tests/store_contract`` runs the
contract suite on it (in-process tests only: a dispatcher in another process cannot reach it).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import json
import math
import struct
from typing import Any, Callable, Iterator

from rethinkdb import errors as rdb_errors
from rethinkdb import ql2_pb2
from rethinkdb.ast import ReQLEncoder

T = ql2_pb2.Term.TermType


class _Bound:
    def __init__(self, name: str, rank: int) -> None:
        self.name = name
        self.rank = rank

    def __repr__(self) -> str:
        return f"r.{self.name}"


MINVAL = _Bound("minval", -1)
MAXVAL = _Bound("maxval", 1)

#: term → (fewest args, most args or None, allowed option names)
SIGNATURES: dict[int, tuple[int, int | None, frozenset[str]]] = {
    T.MAKE_ARRAY: (0, None, frozenset()),
    T.VAR: (1, 1, frozenset()),
    T.DB: (1, 1, frozenset()),
    T.TABLE: (1, 2, frozenset({"read_mode", "identifier_format"})),
    T.GET: (2, 2, frozenset()),
    T.GET_ALL: (2, None, frozenset({"index"})),
    T.EQ: (2, None, frozenset()), T.NE: (2, None, frozenset()), T.LT: (2, None, frozenset()),
    T.LE: (2, None, frozenset()), T.GT: (2, None, frozenset()), T.GE: (2, None, frozenset()),
    T.NOT: (1, 1, frozenset()),
    T.ADD: (2, None, frozenset()), T.SUB: (2, None, frozenset()), T.MUL: (2, None, frozenset()),
    T.DIV: (2, None, frozenset()), T.FLOOR: (1, 1, frozenset()),
    T.APPEND: (2, 2, frozenset()),
    T.GET_FIELD: (2, 2, frozenset()), T.BRACKET: (2, 2, frozenset()),
    T.HAS_FIELDS: (2, None, frozenset()),
    T.PLUCK: (2, None, frozenset()), T.WITHOUT: (2, None, frozenset()),
    T.MERGE: (2, None, frozenset()),
    T.BETWEEN: (3, 3, frozenset({"index", "left_bound", "right_bound"})),
    T.MAP: (2, None, frozenset()),
    T.FILTER: (2, 2, frozenset({"default"})),
    T.ORDER_BY: (1, None, frozenset({"index"})),
    T.COUNT: (1, 2, frozenset()),
    T.LIMIT: (2, 2, frozenset()),
    T.UPDATE: (2, 2, frozenset({"durability", "return_changes", "non_atomic", "ignore_write_hook"})),
    T.REPLACE: (2, 2, frozenset({"durability", "return_changes", "non_atomic", "ignore_write_hook"})),
    T.DELETE: (1, 1, frozenset({"durability", "return_changes", "ignore_write_hook"})),
    T.INSERT: (2, 2, frozenset({"durability", "return_changes", "conflict", "ignore_write_hook"})),
    T.DB_CREATE: (1, 1, frozenset()), T.DB_DROP: (1, 1, frozenset()), T.DB_LIST: (0, 0, frozenset()),
    T.TABLE_CREATE: (1, 2, frozenset({"primary_key", "shards", "replicas", "primary_replica_tag",
                                      "nonvoting_replica_tags", "durability"})),
    T.TABLE_LIST: (0, 1, frozenset()),
    T.FUNCALL: (1, None, frozenset()),
    T.BRANCH: (3, None, frozenset()),
    T.OR: (0, None, frozenset()), T.AND: (0, None, frozenset()),
    T.FOR_EACH: (2, 2, frozenset()),
    T.FUNC: (2, 2, frozenset()),
    T.ASC: (1, 1, frozenset()), T.DESC: (1, 1, frozenset()),
    T.INDEX_CREATE: (2, 3, frozenset({"multi", "geo"})),
    T.INDEX_LIST: (1, 1, frozenset()),
    T.INDEX_WAIT: (1, None, frozenset()),
    T.DEFAULT: (2, 2, frozenset()),
    T.CONTAINS: (1, None, frozenset()),
    T.JSON: (1, 1, frozenset()),
    T.TO_JSON_STRING: (1, 1, frozenset()),
    T.DOWNCASE: (1, 1, frozenset()),
    T.SPLIT: (1, 3, frozenset()),
    T.COERCE_TO: (2, 2, frozenset()),
    T.GROUP: (1, None, frozenset({"index", "multi"})),
    T.UNGROUP: (1, 1, frozenset()),
    T.CHANGES: (1, 1, frozenset({"squash", "changefeed_queue_size", "include_initial", "include_states",
                                 "include_offsets", "include_types"})),
    T.WAIT: (0, 1, frozenset({"wait_for", "timeout"})),
    T.MINVAL: (0, 0, frozenset()), T.MAXVAL: (0, 0, frozenset()),
}
NAMES = {number: name for name, number in vars(T).items() if name.isupper() and isinstance(number, int)}
#: Terms a function given to an atomic write may not contain.
NON_DETERMINISTIC = frozenset({T.TABLE, T.DB, T.GET, T.GET_ALL, T.BETWEEN, T.JAVASCRIPT, T.HTTP, T.RANDOM,
                               T.UUID, T.DB_LIST, T.TABLE_LIST})


class ReqlError(rdb_errors.ReqlQueryLogicError):
    pass


def _missing(message: str) -> Exception:
    return rdb_errors.ReqlNonExistenceError(message, None, [])


def _logic(message: str) -> Exception:
    return rdb_errors.ReqlQueryLogicError(message, None, [])


def check_wire(term: Any) -> None:
    """Raise unless every term of a wire query has a known type, a legal number of
    arguments and only option names that term accepts."""
    if isinstance(term, dict):
        for value in term.values():
            check_wire(value)
        return
    if not isinstance(term, list):
        return
    kind, args = term[0], term[1] if len(term) > 1 else []
    optargs = term[2] if len(term) > 2 else {}
    if kind not in SIGNATURES:
        raise _logic(f"the fake server does not know term {NAMES.get(kind, kind)}")
    low, high, allowed = SIGNATURES[kind]
    if len(args) < low or (high is not None and len(args) > high):
        raise _logic(f"{NAMES[kind]} takes {low}..{high if high is not None else 'n'} arguments, got {len(args)}")
    unknown = set(optargs) - allowed
    if unknown:
        raise _logic(f"{NAMES[kind]} has no option(s) {sorted(unknown)}")
    if kind == T.FUNC:
        check_wire(args[1])
        return
    for arg in args:
        check_wire(arg)
    for value in optargs.values():
        check_wire(value)


# --------------------------------------------------------------------------- values

_TYPE_RANK = {"ARRAY": 0, "BOOL": 1, "NULL": 2, "NUMBER": 3, "OBJECT": 4, "STRING": 6}


def _type(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "BOOL"
    if isinstance(value, (int, float)):
        return "NUMBER"
    if isinstance(value, str):
        return "STRING"
    if isinstance(value, list):
        return "ARRAY"
    if isinstance(value, dict):
        return "OBJECT"
    raise _logic(f"not a datum: {value!r}")


def compare(a: Any, b: Any) -> int:
    """ReQL's total order: minval < arrays < booleans < null < numbers < objects < strings < maxval."""
    if isinstance(a, _Bound) or isinstance(b, _Bound):
        ra = a.rank if isinstance(a, _Bound) else 0
        rb = b.rank if isinstance(b, _Bound) else 0
        return (ra > rb) - (ra < rb)
    ta, tb = _TYPE_RANK[_type(a)], _TYPE_RANK[_type(b)]
    if ta != tb:
        return (ta > tb) - (ta < tb)
    if isinstance(a, list):
        for x, y in zip(a, b):
            c = compare(x, y)
            if c:
                return c
        return (len(a) > len(b)) - (len(a) < len(b))
    if isinstance(a, dict):
        return compare([[k, a[k]] for k in sorted(a)], [[k, b[k]] for k in sorted(b)])
    if a is None:
        return 0
    return (a > b) - (a < b)


def equal(a: Any, b: Any) -> bool:
    if isinstance(a, _Bound) or isinstance(b, _Bound):
        return a is b
    return _type(a) == _type(b) and compare(a, b) == 0


def truthy(value: Any) -> bool:
    return value is not None and value is not False


def deep_merge(old: Any, new: Any) -> Any:
    """``merge``: objects merge key by key, recursively; anything else replaces."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = dict(old)
        for key, value in new.items():
            out[key] = deep_merge(old[key], value) if key in old else value
        return out
    return new


def wire_numbers(value: Any) -> Any:
    """What the driver decodes from the server: whole doubles arrive as ints."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2 ** 53:
        return int(value)
    if isinstance(value, list):
        return [wire_numbers(v) for v in value]
    if isinstance(value, dict):
        return {k: wire_numbers(v) for k, v in value.items()}
    return value


# --------------------------------------------------------------------------- server state

class Table:
    def __init__(self, server: "FakeServer", db: str, name: str) -> None:
        self.server = server
        self.db = db
        self.name = name
        self.docs: dict[Any, dict[str, Any]] = {}
        self.indexes: dict[str, Callable[[Any], Any]] = {}
        self.feeds: list[asyncio.Queue[dict[str, Any]]] = []

    def key(self, pk: Any) -> str:
        return json.dumps(pk, sort_keys=True)

    def ordered(self) -> list[dict[str, Any]]:
        return [self.docs[k] for k in sorted(self.docs, key=lambda k: functools.cmp_to_key(compare)(json.loads(k)))]

    def index_value(self, name: str, doc: dict[str, Any]) -> Any:
        """The doc's key in an index, or None when the doc is not in it."""
        if name == "id":
            return doc["id"]
        if name not in self.indexes:
            raise rdb_errors.ReqlOpFailedError(f"Index `{name}` was not found on table `{self.db}.{self.name}`.",
                                               None, [])
        try:
            value = self.indexes[name](doc)
        except rdb_errors.ReqlError:
            return None
        if value is None or isinstance(value, dict):
            return None
        return value

    def write(self, pk: Any, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        if new is None:
            self.docs.pop(self.key(pk), None)
        else:
            self.docs[self.key(pk)] = copy.deepcopy(new)
        for queue in list(self.feeds):
            queue.put_nowait({"old_val": copy.deepcopy(old), "new_val": copy.deepcopy(new)})


class FakeServer:
    """The databases of one fake RethinkDB server."""

    def __init__(self) -> None:
        self.dbs: dict[str, dict[str, Table]] = {"rethinkdb": {}, "test": {}}
        self.queries = 0
        self.available = True
        self.connections: list[FakeConnection] = []

    def connect(self, db: str | None = None) -> "FakeConnection":
        if not self.available:
            raise rdb_errors.ReqlDriverError("Could not connect to the fake server: it is down")
        conn = FakeConnection(self, db)
        self.connections.append(conn)
        return conn

    def stop(self) -> None:
        """The server goes away: every connection and changefeed breaks, new ones are refused."""
        self.available = False
        for conn in self.connections:
            conn.open = False
            for feed in conn.feeds:
                feed.close()
        self.connections = []

    def start(self) -> None:
        self.available = True


class Selection:
    """A sequence of documents of one table (writable), optionally bound to the index a
    ``between`` used (so ``order_by(index=)`` can be checked against it)."""

    def __init__(self, table: Table, docs: list[dict[str, Any]], index: str | None = None,
                 ordered_by: str | None = None) -> None:
        self.table = table
        self.docs = docs
        self.index = index
        self.ordered_by = ordered_by


class Single:
    def __init__(self, table: Table, pk: Any) -> None:
        self.table = table
        self.pk = pk

    @property
    def doc(self) -> dict[str, Any] | None:
        return self.table.docs.get(self.table.key(self.pk))


class Grouped:
    def __init__(self, pairs: list[tuple[Any, Any]]) -> None:
        self.pairs = pairs


class Func:
    def __init__(self, evaluator: "Evaluator", params: list[int], body: Any, env: dict[int, Any]) -> None:
        self.evaluator = evaluator
        self.params = params
        self.body = body
        self.env = env

    def __call__(self, *args: Any) -> Any:
        env = dict(self.env)
        for param, value in zip(self.params, args):
            env[param] = value
        return self.evaluator.datum(self.evaluator.eval(self.body, env))


def _contains_term(term: Any, kinds: frozenset[int]) -> bool:
    if isinstance(term, dict):
        return any(_contains_term(v, kinds) for v in term.values())
    if isinstance(term, list) and term:
        if term[0] in kinds:
            return True
        args = term[1] if len(term) > 1 else []
        optargs = term[2] if len(term) > 2 else {}
        return any(_contains_term(a, kinds) for a in args) or any(_contains_term(v, kinds) for v in optargs.values())
    return False


class Evaluator:
    def __init__(self, server: FakeServer, default_db: str | None) -> None:
        self.server = server
        self.default_db = default_db

    # ------------------------------------------------------------------ plumbing

    def datum(self, value: Any) -> Any:
        """A plain value from a sequence or selection."""
        if isinstance(value, Selection):
            return [copy.deepcopy(d) for d in value.docs]
        if isinstance(value, Single):
            return copy.deepcopy(value.doc)
        if isinstance(value, Table):
            return [copy.deepcopy(d) for d in value.ordered()]
        return value

    def seq(self, value: Any) -> Any:
        if isinstance(value, Table):
            return Selection(value, value.ordered())
        if isinstance(value, (Selection, list)):
            return value
        raise _logic(f"Expected a sequence, got {_type(value) if not isinstance(value, Single) else 'SINGLE_SELECTION'}")

    def items(self, value: Any) -> list[Any]:
        value = self.seq(value)
        return list(value.docs) if isinstance(value, Selection) else list(value)

    def table(self, db: str, name: str) -> Table:
        tables = self.server.dbs.get(db)
        if tables is None:
            raise rdb_errors.ReqlOpFailedError(f"Database `{db}` does not exist.", None, [])
        if name not in tables:
            raise rdb_errors.ReqlOpFailedError(f"Table `{db}.{name}` does not exist.", None, [])
        return tables[name]

    def func(self, term: Any, env: dict[int, Any]) -> Callable[..., Any]:
        if isinstance(term, list) and term and term[0] == T.FUNC:
            params = self.eval(term[1][0], env)
            return Func(self, params, term[1][1], env)
        value = self.eval(term, env)
        return lambda *_: value

    def deterministic(self, term: Any, what: str) -> None:
        if _contains_term(term, NON_DETERMINISTIC):
            raise _logic(f"Could not prove {what} deterministic.  Maybe you want to use the non_atomic flag?")

    # ------------------------------------------------------------------ evaluation

    def eval(self, term: Any, env: dict[int, Any]) -> Any:
        if isinstance(term, dict):
            return {k: self.datum(self.eval(v, env)) for k, v in term.items()}
        if not isinstance(term, list):
            return term
        kind = term[0]
        args = term[1] if len(term) > 1 else []
        optargs = term[2] if len(term) > 2 else {}
        handler = getattr(self, "t_" + NAMES[kind].lower(), None)
        if handler is None:
            raise _logic(f"the fake server does not evaluate {NAMES[kind]}")
        return handler(args, optargs, env)

    def arg(self, args: list[Any], i: int, env: dict[int, Any]) -> Any:
        return self.datum(self.eval(args[i], env))

    def t_make_array(self, args, optargs, env):
        return [self.datum(self.eval(a, env)) for a in args]

    def t_var(self, args, optargs, env):
        return env[args[0]]

    def t_func(self, args, optargs, env):
        return self.func([T.FUNC, args], env)

    def t_funcall(self, args, optargs, env):
        function = self.func(args[0], env)
        values = [self.eval(a, env) for a in args[1:]]
        if isinstance(function, Func):
            inner = dict(function.env)
            for param, value in zip(function.params, values):
                inner[param] = value
            return self.eval(function.body, inner)
        return function(*values)

    def t_minval(self, args, optargs, env):
        return MINVAL

    def t_maxval(self, args, optargs, env):
        return MAXVAL

    def t_db(self, args, optargs, env):
        return ("db", self.arg(args, 0, env))

    def t_table(self, args, optargs, env):
        if len(args) == 2:
            db = self.eval(args[0], env)[1]
            name = self.arg(args, 1, env)
        else:
            db, name = self.default_db, self.arg(args, 0, env)
        return self.table(db, name)

    def t_db_list(self, args, optargs, env):
        return sorted(self.server.dbs)

    def t_db_create(self, args, optargs, env):
        name = self.arg(args, 0, env)
        if name in self.server.dbs:
            raise rdb_errors.ReqlOpFailedError(f"Database `{name}` already exists.", None, [])
        self.server.dbs[name] = {}
        return {"dbs_created": 1}

    def t_db_drop(self, args, optargs, env):
        name = self.arg(args, 0, env)
        if name not in self.server.dbs:
            raise rdb_errors.ReqlOpFailedError(f"Database `{name}` does not exist.", None, [])
        tables = self.server.dbs.pop(name)
        return {"dbs_dropped": 1, "tables_dropped": len(tables)}

    def t_table_list(self, args, optargs, env):
        db = self.eval(args[0], env)[1] if args else self.default_db
        if db not in self.server.dbs:
            raise rdb_errors.ReqlOpFailedError(f"Database `{db}` does not exist.", None, [])
        return sorted(self.server.dbs[db])

    def t_table_create(self, args, optargs, env):
        db = self.eval(args[0], env)[1] if len(args) == 2 else self.default_db
        name = self.arg(args, len(args) - 1, env)
        if db not in self.server.dbs:
            raise rdb_errors.ReqlOpFailedError(f"Database `{db}` does not exist.", None, [])
        if name in self.server.dbs[db]:
            raise rdb_errors.ReqlOpFailedError(f"Table `{db}.{name}` already exists.", None, [])
        self.server.dbs[db][name] = Table(self.server, db, name)
        return {"tables_created": 1}

    def t_wait(self, args, optargs, env):
        if optargs.get("wait_for") not in (None, "ready_for_outdated_reads", "ready_for_reads",
                                           "ready_for_writes", "all_replicas_ready"):
            raise _logic("bad wait_for")
        self.eval(args[0], env)
        return {"ready": 1}

    def t_index_list(self, args, optargs, env):
        return sorted(self.eval(args[0], env).indexes)

    def t_index_create(self, args, optargs, env):
        table = self.eval(args[0], env)
        name = self.arg(args, 1, env)
        if name in table.indexes:
            raise rdb_errors.ReqlOpFailedError(f"Index `{name}` already exists on table `{table.db}.{table.name}`.",
                                               None, [])
        function: Callable[..., Any]
        if len(args) < 3:
            function = functools.partial(lambda doc, field: self.field(doc, field), field=name)
        else:
            self.deterministic(args[2], "index function")
            function = self.func(args[2], env)
        table.indexes[name] = function
        return {"created": 1}

    def t_index_wait(self, args, optargs, env):
        table = self.eval(args[0], env)
        return [{"index": name, "ready": True} for name in sorted(table.indexes)]

    def t_get(self, args, optargs, env):
        return Single(self.eval(args[0], env), self.arg(args, 1, env))

    def t_get_all(self, args, optargs, env):
        table = self.eval(args[0], env)
        index = self.datum(self.eval(optargs["index"], env)) if "index" in optargs else "id"
        keys = [self.arg(args, i, env) for i in range(1, len(args))]
        out, seen = [], set()
        for doc in table.ordered():
            value = table.index_value(index, doc)
            if value is not None and any(equal(value, key) for key in keys) and table.key(doc["id"]) not in seen:
                seen.add(table.key(doc["id"]))
                out.append(doc)
        return Selection(table, out)

    def t_between(self, args, optargs, env):
        source = self.eval(args[0], env)
        if not isinstance(source, Table):
            raise _logic("between: only on a table in this fake")
        low, high = self.eval(args[1], env), self.eval(args[2], env)
        index = self.datum(self.eval(optargs["index"], env)) if "index" in optargs else "id"
        left = optargs.get("left_bound", "closed")
        right = optargs.get("right_bound", "open")
        if left not in ("open", "closed") or right not in ("open", "closed"):
            raise _logic("between: left_bound and right_bound are 'open' or 'closed'")
        out = []
        for doc in source.ordered():
            value = source.index_value(index, doc)
            if value is None:
                continue
            lo, hi = compare(value, low), compare(value, high)
            if (lo > 0 or (lo == 0 and left == "closed")) and (hi < 0 or (hi == 0 and right == "closed")):
                out.append(doc)
        return Selection(source, out, index=index)

    def t_order_by(self, args, optargs, env):
        source = self.eval(args[0], env)
        if "index" in optargs:
            spec = optargs["index"]
            descending = isinstance(spec, list) and spec[0] == T.DESC
            name = self.arg(spec[1], 0, env) if isinstance(spec, list) else self.datum(self.eval(spec, env))
            if isinstance(source, Table):
                selection = Selection(source, source.ordered())
            elif isinstance(source, Selection) and source.index is not None:
                if source.index != name:
                    raise _logic(f"Cannot order by index `{name}` after calling BETWEEN on index `{source.index}`.")
                selection = source
            else:
                raise _logic("Expected type TABLE_SLICE but found SELECTION: order_by(index=) needs a table or between")
            table = selection.table
            keyed = [(table.index_value(name, d), d) for d in selection.docs]
            keyed = [(v, d) for v, d in keyed if v is not None]
            keyed.sort(key=functools.cmp_to_key(lambda x, y: compare(x[0], y[0]) or compare(x[1]["id"], y[1]["id"])),
                       reverse=descending)
            return Selection(table, [d for _, d in keyed], ordered_by=name)
        items = self.items(source)
        for spec in reversed(args[1:]):
            descending = isinstance(spec, list) and spec[0] == T.DESC
            inner = spec[1][0] if isinstance(spec, list) and spec[0] in (T.DESC, T.ASC) else spec
            field = self.datum(self.eval(inner, env))
            items.sort(key=functools.cmp_to_key(lambda x, y: compare(self.field(x, field), self.field(y, field))),
                       reverse=descending)
        return items   # order_by without an index returns an array

    def t_limit(self, args, optargs, env):
        source = self.seq(self.eval(args[0], env))
        n = self.arg(args, 1, env)
        if isinstance(source, Selection):
            return Selection(source.table, source.docs[:n], ordered_by=source.ordered_by)
        return source[:n]

    def t_filter(self, args, optargs, env):
        source = self.seq(self.eval(args[0], env))
        predicate = self.func(args[1], env)
        default = self.datum(self.eval(optargs["default"], env)) if "default" in optargs else False

        def keep(doc: Any) -> bool:
            try:
                return truthy(predicate(copy.deepcopy(doc)))
            except rdb_errors.ReqlNonExistenceError:
                return truthy(default)

        if isinstance(source, Selection):
            return Selection(source.table, [d for d in source.docs if keep(d)], ordered_by=source.ordered_by)
        return [d for d in source if keep(d)]

    def t_map(self, args, optargs, env):
        function = self.func(args[-1], env)
        return [function(copy.deepcopy(d)) for d in self.items(self.eval(args[0], env))]

    def t_for_each(self, args, optargs, env):
        function = self.func(args[1], env)
        total: dict[str, Any] = {}
        for doc in self.items(self.eval(args[0], env)):
            result = function(doc)
            for key, value in (result or {}).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    total[key] = total.get(key, 0) + value
        return total

    def t_count(self, args, optargs, env):
        value = self.eval(args[0], env)
        if isinstance(value, Grouped):
            return Grouped([(k, len(v)) for k, v in value.pairs])
        if isinstance(value, str):
            return len(value)
        return len(self.items(value))

    def t_group(self, args, optargs, env):
        if "index" in optargs or "multi" in optargs:
            raise _logic("group(index=) is not used by the store")
        functions = [self.func(a, env) if isinstance(a, list) and a[0] == T.FUNC else
                     (lambda doc, f=self.arg(args, i, env): self.field(doc, f)) for i, a in enumerate(args[1:], 1)]
        pairs: list[tuple[Any, list[Any]]] = []
        for doc in self.items(self.eval(args[0], env)):
            keys = [f(copy.deepcopy(doc)) for f in functions]
            key = keys[0] if len(keys) == 1 else keys
            for existing in pairs:
                if equal(existing[0], key):
                    existing[1].append(doc)
                    break
            else:
                pairs.append((key, [doc]))
        return Grouped(pairs)

    def t_ungroup(self, args, optargs, env):
        grouped = self.eval(args[0], env)
        if not isinstance(grouped, Grouped):
            raise _logic("ungroup needs grouped data")
        pairs = sorted(grouped.pairs, key=functools.cmp_to_key(lambda x, y: compare(x[0], y[0])))
        return [{"group": k, "reduction": self.datum(v)} for k, v in pairs]

    def field(self, value: Any, name: str) -> Any:
        if isinstance(value, dict):
            if name not in value:
                raise _missing(f"No attribute `{name}` in object")
            return value[name]
        raise _missing(f"Cannot perform get_field on a non-object non-sequence `{json.dumps(value)}`.")

    def t_get_field(self, args, optargs, env):
        return self.t_bracket(args, optargs, env)

    def t_bracket(self, args, optargs, env):
        value = self.eval(args[0], env)
        key = self.arg(args, 1, env)
        if isinstance(value, (Selection, Table)) or (isinstance(value, list) and isinstance(key, str)):
            out = []
            for doc in self.items(value):
                if isinstance(doc, dict) and key in doc:
                    out.append(doc[key])
            return out
        value = self.datum(value)
        if isinstance(key, int) and isinstance(value, list):
            return value[key]
        return self.field(value, key)

    def t_has_fields(self, args, optargs, env):
        value = self.arg(args, 0, env)
        fields = [self.arg(args, i, env) for i in range(1, len(args))]
        if not isinstance(value, dict):
            raise _logic("has_fields on a non-object")
        return all(f in value and value[f] is not None for f in fields)

    def t_pluck(self, args, optargs, env):
        value = self.eval(args[0], env)
        fields = [self.arg(args, i, env) for i in range(1, len(args))]
        pick = lambda d: {f: d[f] for f in fields if f in d}
        if isinstance(value, (Selection, Table, list)):
            return [pick(d) for d in self.items(value)]
        return pick(self.datum(value))

    def t_without(self, args, optargs, env):
        value = self.arg(args, 0, env)
        fields = [self.arg(args, i, env) for i in range(1, len(args))]
        if isinstance(value, list):
            return [{k: v for k, v in d.items() if k not in fields} for d in value]
        if not isinstance(value, dict):
            raise _logic(f"Cannot perform without on a non-object non-sequence `{json.dumps(value)}`.")
        return {k: v for k, v in value.items() if k not in fields}

    def t_merge(self, args, optargs, env):
        value = self.arg(args, 0, env)
        for i in range(1, len(args)):
            other = self.arg(args, i, env)
            if not isinstance(value, dict) or not isinstance(other, dict):
                raise _logic("merge needs objects")
            value = deep_merge(value, other)
        return value

    def t_append(self, args, optargs, env):
        return self.arg(args, 0, env) + [self.arg(args, 1, env)]

    def t_contains(self, args, optargs, env):
        items = self.items(self.eval(args[0], env))
        wanted = [self.arg(args, i, env) for i in range(1, len(args))]
        return all(any(equal(item, w) for item in items) for w in wanted)

    def t_default(self, args, optargs, env):
        try:
            value = self.arg(args, 0, env)
        except rdb_errors.ReqlNonExistenceError:
            return self.arg(args, 1, env)
        return self.arg(args, 1, env) if value is None else value

    def t_branch(self, args, optargs, env):
        if len(args) % 2 == 0:
            raise _logic("branch takes an odd number of arguments")
        for i in range(0, len(args) - 1, 2):
            if truthy(self.arg(args, i, env)):
                return self.eval(args[i + 1], env)
        return self.eval(args[-1], env)

    def t_and(self, args, optargs, env):
        value: Any = True
        for a in args:
            value = self.arg([a], 0, env)
            if not truthy(value):
                return value
        return value

    def t_or(self, args, optargs, env):
        value: Any = False
        for a in args:
            value = self.arg([a], 0, env)
            if truthy(value):
                return value
        return value

    def t_not(self, args, optargs, env):
        return not truthy(self.arg(args, 0, env))

    def _chain(self, args, env, test):
        values = [self.arg(args, i, env) for i in range(len(args))]
        return all(test(a, b) for a, b in zip(values, values[1:]))

    def t_eq(self, args, optargs, env):
        return self._chain(args, env, equal)

    def t_ne(self, args, optargs, env):
        return not self._chain(args, env, equal)

    def t_lt(self, args, optargs, env):
        return self._chain(args, env, lambda a, b: compare(a, b) < 0)

    def t_le(self, args, optargs, env):
        return self._chain(args, env, lambda a, b: compare(a, b) <= 0)

    def t_gt(self, args, optargs, env):
        return self._chain(args, env, lambda a, b: compare(a, b) > 0)

    def t_ge(self, args, optargs, env):
        return self._chain(args, env, lambda a, b: compare(a, b) >= 0)

    def _numbers(self, args, env) -> list[float]:
        values = [self.arg(args, i, env) for i in range(len(args))]
        for v in values:
            if _type(v) != "NUMBER":
                raise _logic(f"Expected type NUMBER but found {_type(v)}.")
        return values

    def t_add(self, args, optargs, env):
        values = [self.arg(args, i, env) for i in range(len(args))]
        if all(isinstance(v, str) for v in values):
            return "".join(values)
        if all(isinstance(v, list) for v in values):
            return [x for v in values for x in v]
        return functools.reduce(lambda a, b: a + b, self._numbers(args, env))

    def t_sub(self, args, optargs, env):
        return functools.reduce(lambda a, b: a - b, self._numbers(args, env))

    def t_mul(self, args, optargs, env):
        return functools.reduce(lambda a, b: a * b, self._numbers(args, env))

    def t_div(self, args, optargs, env):
        return functools.reduce(lambda a, b: a / b, self._numbers(args, env))

    def t_floor(self, args, optargs, env):
        return math.floor(self._numbers(args, env)[0])

    def t_json(self, args, optargs, env):
        return json.loads(self.arg(args, 0, env))

    def t_to_json_string(self, args, optargs, env):
        return json.dumps(self.arg(args, 0, env), separators=(",", ":"))

    def t_downcase(self, args, optargs, env):
        return self.arg(args, 0, env).translate(str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ",
                                                              "abcdefghijklmnopqrstuvwxyz"))   # ASCII only, as ReQL

    def t_split(self, args, optargs, env):
        text = self.arg(args, 0, env)
        separator = self.arg(args, 1, env) if len(args) > 1 else None
        return text.split(separator) if separator is not None else text.split()

    def t_coerce_to(self, args, optargs, env):
        target = self.arg(args, 1, env).lower()
        value = self.eval(args[0], env)
        if target == "array":
            return self.items(value) if not isinstance(value, list) else value
        raise _logic(f"coerce_to {target} is not used by the store")

    def t_desc(self, args, optargs, env):
        raise _logic("DESC outside order_by")

    # ------------------------------------------------------------------ writes

    def _result(self, return_changes: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"deleted": 0, "errors": 0, "inserted": 0, "replaced": 0, "skipped": 0, "unchanged": 0}
        if return_changes:
            out["changes"] = []
        return out

    def _targets(self, value: Any) -> tuple[Table, list[Any]]:
        if isinstance(value, Single):
            return value.table, [value.pk]
        if isinstance(value, Table):
            return value, [d["id"] for d in value.ordered()]
        if isinstance(value, Selection):
            return value.table, [d["id"] for d in value.docs]
        raise _logic("Expected type SELECTION")

    def _modify(self, args, optargs, env, replace: bool):
        table, keys = self._targets(self.eval(args[0], env))
        spec = args[1]
        if not optargs.get("non_atomic"):
            self.deterministic(spec, "function" if isinstance(spec, list) and spec[0] == T.FUNC else "argument")
        function = self.func(spec, env)
        return_changes = self.datum(self.eval(optargs["return_changes"], env)) if "return_changes" in optargs else False
        result = self._result(return_changes)
        for pk in keys:
            old = copy.deepcopy(table.docs.get(table.key(pk)))
            if old is None and not replace:
                result["skipped"] += 1
                continue
            try:
                given = function(copy.deepcopy(old))
                if replace:
                    new = given
                else:
                    if not isinstance(given, dict):
                        raise _logic("Expected type OBJECT in update")
                    new = deep_merge(old, given)
                if new is not None and (not isinstance(new, dict) or "id" not in new or not equal(new["id"], pk)):
                    raise _logic("Primary key `id` cannot be changed.")
            except rdb_errors.ReqlError as exc:
                result["errors"] += 1
                result.setdefault("first_error", str(exc))
                continue
            if new is None and old is None:
                result["skipped"] += 1
            elif new is None:
                result["deleted"] += 1
                table.write(pk, old, None)
            elif old is None:
                result["inserted"] += 1
                table.write(pk, None, new)
            elif equal(old, new):
                result["unchanged"] += 1
                if return_changes == "always":
                    result["changes"].append({"old_val": old, "new_val": old})
                continue
            else:
                result["replaced"] += 1
                table.write(pk, old, new)
            if return_changes:
                result["changes"].append({"old_val": old, "new_val": copy.deepcopy(new)})
        return result

    def t_update(self, args, optargs, env):
        return self._modify(args, optargs, env, replace=False)

    def t_replace(self, args, optargs, env):
        return self._modify(args, optargs, env, replace=True)

    def t_delete(self, args, optargs, env):
        table, keys = self._targets(self.eval(args[0], env))
        result = self._result(False)
        for pk in keys:
            old = table.docs.get(table.key(pk))
            if old is None:
                result["skipped"] += 1
                continue
            table.write(pk, old, None)
            result["deleted"] += 1
        return result

    def t_insert(self, args, optargs, env):
        table = self.eval(args[0], env)
        docs = self.arg(args, 1, env)
        docs = docs if isinstance(docs, list) else [docs]
        conflict = optargs.get("conflict", "error")
        resolve = None
        if isinstance(conflict, list):
            self.deterministic(conflict, "conflict function")
            resolve = self.func(conflict, env)
        elif conflict not in ("error", "replace", "update"):
            raise _logic(f"conflict must be error, replace, update or a function, not {conflict!r}")
        return_changes = self.datum(self.eval(optargs["return_changes"], env)) if "return_changes" in optargs else False
        result = self._result(return_changes)
        for doc in docs:
            if not isinstance(doc, dict) or "id" not in doc:
                raise _logic("the store always gives primary keys")
            old = copy.deepcopy(table.docs.get(table.key(doc["id"])))
            if old is None:
                table.write(doc["id"], None, doc)
                result["inserted"] += 1
                if return_changes:
                    result["changes"].append({"old_val": None, "new_val": copy.deepcopy(doc)})
                continue
            if conflict == "error" and resolve is None:
                result["errors"] += 1
                result.setdefault("first_error", f"Duplicate primary key `id`: {json.dumps(doc['id'])}")
                if return_changes == "always":
                    result["changes"].append({"old_val": old, "new_val": old, "error": "Duplicate primary key"})
                continue
            if resolve is not None:
                new = resolve(doc["id"], copy.deepcopy(old), copy.deepcopy(doc))
            elif conflict == "replace":
                new = doc
            else:
                new = deep_merge(old, doc)
            if equal(old, new):
                result["unchanged"] += 1
                if return_changes == "always":
                    result["changes"].append({"old_val": old, "new_val": old})
                continue
            table.write(doc["id"], old, new)
            result["replaced"] += 1
            if return_changes:
                result["changes"].append({"old_val": old, "new_val": copy.deepcopy(new)})
        return result

    def t_changes(self, args, optargs, env):
        table = self.eval(args[0], env)
        if not isinstance(table, Table):
            raise _logic("changes: only on a table in this fake")
        return FakeFeed(table)


class FakeFeed:
    """A changefeed cursor: every change of the table from now on."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        table.feeds.append(self.queue)
        self.closed = False

    def __aiter__(self) -> "FakeFeed":
        return self

    async def __anext__(self) -> dict[str, Any]:
        if self.closed:
            raise StopAsyncIteration
        item = await self.queue.get()
        if item.get("closed"):
            raise rdb_errors.ReqlDriverError("Connection is closed.")
        return wire_numbers(item)

    def close(self) -> None:
        self.closed = True
        if self.queue in self.table.feeds:
            self.table.feeds.remove(self.queue)
        self.queue.put_nowait({"closed": True})


class FakeConnection:
    """What ``query.run(conn)`` needs of a connection: ``_start``."""

    def __init__(self, server: FakeServer, db: str | None) -> None:
        self.server = server
        self.db = db
        self.open = True
        self.feeds: list[FakeFeed] = []
        self.encoder = ReQLEncoder()

    def is_open(self) -> bool:
        return self.open and self.server.available

    async def close(self, noreply_wait: bool = True) -> None:
        self.open = False
        for feed in self.feeds:
            feed.close()

    async def _start(self, term: Any, **global_optargs: Any) -> Any:
        await asyncio.sleep(0)           # concurrent queries interleave between queries, never inside one
        if not self.is_open():
            raise rdb_errors.ReqlDriverError("Connection is closed.")
        wire = json.loads(self.encoder.encode(term))
        check_wire(wire)
        self.server.queries += 1
        result = Evaluator(self.server, self.db).eval(wire, {})
        if isinstance(result, FakeFeed):
            self.feeds.append(result)
            return result
        evaluator = Evaluator(self.server, self.db)
        result = evaluator.datum(result)
        if isinstance(result, (Grouped, _Bound, tuple)):
            raise _logic("the fake server cannot send this value")
        return wire_numbers(copy.deepcopy(json.loads(json.dumps(result))))


# --------------------------------------------------------------------------- the wire protocol


class FakeWireServer:
    """The double behind a TCP port, speaking RethinkDB's wire protocol (V1_0): the SCRAM-SHA-256
    handshake (passwords are checked), START, CONTINUE, STOP and NOREPLY_WAIT, sequences and
    changefeeds answered as the server does. The unmodified driver connects to it, from this
    process or any other, so a dispatcher started as a subprocess can use it too.

    It runs on its own event loop in a thread: ``start()`` returns once it listens on a free
    loopback port; ``down()`` drops every connection and refuses new ones until ``up()``.
    """

    def __init__(self, users: dict[str, str] | None = None) -> None:
        self.server = FakeServer()
        self.users = users if users is not None else {"admin": ""}
        self.port = 0
        self.refusing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: Any = None
        self._listener: Any = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"rethinkdb://127.0.0.1:{self.port}"

    def start(self) -> "FakeWireServer":
        import threading

        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)

            async def listen() -> None:
                self._listener = await asyncio.start_server(self._serve, "127.0.0.1", 0)
                self.port = self._listener.sockets[0].getsockname()[1]
                ready.set()

            self._loop.run_until_complete(listen())
            self._loop.run_forever()
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

        self._thread = threading.Thread(target=run, name="fake-rethinkdb", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def _call(self, fn: Callable[[], Any]) -> None:
        import concurrent.futures

        assert self._loop is not None
        done: concurrent.futures.Future[None] = concurrent.futures.Future()

        def go() -> None:
            try:
                fn()
                done.set_result(None)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                done.set_exception(exc)

        self._loop.call_soon_threadsafe(go)
        done.result(10)

    def down(self) -> None:
        """Drop every connection (and changefeed) and refuse new ones."""
        def go() -> None:
            self.refusing = True
            for writer in list(self._writers):
                writer.close()
            self._writers.clear()
        self._call(go)

    def up(self) -> None:
        def go() -> None:
            self.refusing = False
        self._call(go)

    def stop(self) -> None:
        if self._loop is None:
            return

        def go() -> None:
            for writer in list(self._writers):
                writer.close()
            if self._listener is not None:
                self._listener.close()
            assert self._loop is not None
            self._loop.stop()
        self._loop.call_soon_threadsafe(go)
        self._thread.join(10)
        self._loop = None

    # ------------------------------------------------------------------ one connection

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.close()
            return
        self._writers.add(writer)
        feeds: dict[int, FakeFeed] = {}
        tasks: set[asyncio.Task[None]] = set()
        try:
            db = await self._handshake(reader, writer)
            if db is None:
                return
            while True:
                token, length = struct.unpack("<qL", await reader.readexactly(12))
                query = json.loads(await reader.readexactly(length))
                kind = query[0]
                if kind == ql2_pb2.Query.QueryType.START:
                    optargs = query[2] if len(query) > 2 else {}
                    default_db = optargs["db"][1][0] if isinstance(optargs.get("db"), list) else None
                    self._start(writer, token, query[1], default_db, feeds, tasks, bool(optargs.get("noreply")))
                elif kind == ql2_pb2.Query.QueryType.CONTINUE:
                    feed = feeds.get(token)
                    if feed is None:
                        self._send(writer, token, {"t": R.CLIENT_ERROR, "r": [f"Token {token} not in stream cache."],
                                                   "b": []})
                    else:
                        task = asyncio.ensure_future(self._next_batch(writer, token, feed))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                elif kind == ql2_pb2.Query.QueryType.STOP:
                    feed = feeds.pop(token, None)
                    if feed is not None:
                        feed.close()
                    self._send(writer, token, {"t": R.SUCCESS_SEQUENCE, "r": []})
                elif kind == ql2_pb2.Query.QueryType.NOREPLY_WAIT:
                    self._send(writer, token, {"t": R.WAIT_COMPLETE, "r": []})
                else:
                    self._send(writer, token, {"t": R.SERVER_INFO, "r": [{"id": "fake", "name": "fake", "proxy": False}]})
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            for task in tasks:
                task.cancel()
            for feed in feeds.values():
                feed.close()
            self._writers.discard(writer)
            writer.close()

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str | None:
        import base64
        import hashlib
        import hmac
        import os

        (magic,) = struct.unpack("<L", await reader.readexactly(4))
        if magic != ql2_pb2.VersionDummy.Version.V1_0:
            writer.write(b"ERROR: Received an unsupported protocol version.\0")
            return None
        first = json.loads((await reader.readuntil(b"\0"))[:-1])
        client_first_bare = first["authentication"][3:]          # after "n,,"
        fields = dict(part.split("=", 1) for part in client_first_bare.split(","))
        user, client_nonce = fields["n"].replace("=2C", ",").replace("=3D", "="), fields["r"]
        writer.write(json.dumps({"success": True, "min_protocol_version": 0, "max_protocol_version": 0,
                                 "server_version": "2.4.4~fake"}).encode() + b"\0")
        salt, iterations = os.urandom(16), 64
        nonce = client_nonce + base64.standard_b64encode(os.urandom(18)).decode()
        server_first = f"r={nonce},s={base64.standard_b64encode(salt).decode()},i={iterations}"
        writer.write(json.dumps({"success": True, "authentication": server_first}).encode() + b"\0")
        final = json.loads((await reader.readuntil(b"\0"))[:-1])["authentication"]
        without_proof, proof = final.rsplit(",p=", 1)
        salted = hashlib.pbkdf2_hmac("sha256", self.users.get(user, "\0no such user").encode(), salt, iterations)
        auth_message = f"{client_first_bare},{server_first},{without_proof}".encode()
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        signature = hmac.new(hashlib.sha256(client_key).digest(), auth_message, hashlib.sha256).digest()
        expected = bytes(a ^ b for a, b in zip(client_key, signature))
        if user not in self.users or not hmac.compare_digest(expected, base64.standard_b64decode(proof)):
            writer.write(json.dumps({"success": False, "error": "Wrong password", "error_code": 12}).encode() + b"\0")
            return None
        server_signature = hmac.new(hmac.new(salted, b"Server Key", hashlib.sha256).digest(), auth_message,
                                    hashlib.sha256).digest()
        writer.write(json.dumps({"success": True,
                                 "authentication": "v=" + base64.standard_b64encode(server_signature).decode()})
                     .encode() + b"\0")
        return ""

    @staticmethod
    def _send(writer: asyncio.StreamWriter, token: int, response: dict[str, Any]) -> None:
        body = json.dumps(wire_numbers(response), separators=(",", ":")).encode()
        writer.write(struct.pack("<qL", token, len(body)) + body)

    def _start(self, writer: asyncio.StreamWriter, token: int, term: Any, db: str | None,
               feeds: dict[int, FakeFeed], tasks: set[asyncio.Task[None]], noreply: bool) -> None:
        try:
            check_wire(term)
            self.server.queries += 1
            evaluator = Evaluator(self.server, db)
            raw = evaluator.eval(term, {})
            if isinstance(raw, FakeFeed):
                feeds[token] = raw
                response: dict[str, Any] = {"t": R.SUCCESS_PARTIAL, "r": [], "n": [1]}   # SEQUENCE_FEED
            else:
                value = evaluator.datum(raw)
                if isinstance(value, (Grouped, _Bound, tuple)):
                    raise _logic("the fake server cannot send this value")
                sequence = isinstance(raw, (Selection, Table)) or (isinstance(raw, list) and isinstance(term, list)
                                                                    and term[0] in SEQUENCE_TERMS)
                response = {"t": R.SUCCESS_SEQUENCE, "r": value} if sequence else {"t": R.SUCCESS_ATOM, "r": [value]}
        except rdb_errors.ReqlError as exc:
            response = {"t": R.RUNTIME_ERROR, "e": _error_type(exc), "r": [str(exc.message)], "b": []}
        if not noreply:
            self._send(writer, token, response)

    async def _next_batch(self, writer: asyncio.StreamWriter, token: int, feed: FakeFeed) -> None:
        first = await feed.queue.get()
        batch = [first]
        while not feed.queue.empty():
            batch.append(feed.queue.get_nowait())
        if any(item.get("closed") for item in batch):
            self._send(writer, token, {"t": R.SUCCESS_SEQUENCE, "r": []})
            return
        self._send(writer, token, {"t": R.SUCCESS_PARTIAL, "r": batch, "n": [1]})


R = ql2_pb2.Response.ResponseType
#: Terms whose result the server streams as a sequence rather than sending as one array.
SEQUENCE_TERMS = frozenset({T.TABLE, T.GET_ALL, T.BETWEEN, T.FILTER, T.LIMIT, T.PLUCK, T.ORDER_BY, T.BRACKET,
                            T.GET_FIELD, T.MAP})


def _error_type(exc: Exception) -> int:
    E = ql2_pb2.Response.ErrorType
    for cls, code in ((rdb_errors.ReqlNonExistenceError, E.NON_EXISTENCE), (rdb_errors.ReqlOpFailedError, E.OP_FAILED),
                      (rdb_errors.ReqlQueryLogicError, E.QUERY_LOGIC)):
        if isinstance(exc, cls):
            return code
    return E.INTERNAL


@contextlib.contextmanager
def patch_connect(server: FakeServer) -> Iterator[FakeServer]:
    """Make ``r.connect`` of the tqueues RethinkDB store (and of its helpers) reach ``server``."""
    from tqueues.store import rethinkdb as store_module

    async def connect(*args: Any, **kwargs: Any) -> FakeConnection:
        return server.connect(kwargs.get("db"))

    original = store_module.r.__dict__.get("connect")
    store_module.r.connect = connect
    try:
        yield server
    finally:
        if original is None:
            del store_module.r.connect
        else:
            store_module.r.connect = original


__all__ = ["FakeServer", "FakeConnection", "FakeWireServer", "check_wire", "compare", "patch_connect", "SIGNATURES"]
