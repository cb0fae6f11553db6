"""Hot statements, compiled once per process instead of on every call.

:func:`update_row` is the UPDATE by primary key (optionally fenced on the run state)
behind every ``JobRun.transition`` and the job-row update after each run.

Every run is read twice with its job and slot (the start task, the execute task).  For
such a three-table SELECT the ORM spends several times longer building the statement
(selecting ~80 columns, joins, converters) than the database spends running it.  A
:class:`Prepared` query is built by the ORM once per thread and database alias, with a
sentinel in place of its one parameter; afterwards only the parameter changes, and the
rows are turned into model instances the way the ORM's own iterator does (its
converters, ``from_db``, the related-object populators of ``select_related``).

Anything the fast path does not support (a query whose only parameter is not the
sentinel) falls back to the plain ORM call, so results never differ.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from django.core.exceptions import FieldDoesNotExist
from django.db import connection, connections, router, transaction
from django.db.models import Model, QuerySet
from django.db.models.query import get_related_populators

SENTINEL = -987654321


class _Compiled:
    """A one-parameter queryset compiled once per thread and database alias."""

    def __init__(self, build: Callable[[object], QuerySet]) -> None:
        """``build(value)``: the queryset for one parameter value (filtered on it, nothing else)."""
        self.build = build
        self._local = threading.local()
        self._model: type[Model] | None = None

    def _alias_and_entry(self):
        if self._model is None:
            self._model = self.build(SENTINEL).model
        alias = router.db_for_read(self._model)
        cache = getattr(self._local, "cache", None)
        if cache is None:
            cache = self._local.cache = {}
        if alias not in cache:
            cache[alias] = self._compile(alias)
        return alias, cache[alias]

    def _queryset(self, value) -> QuerySet:
        return self.build(value)

    def _compile(self, alias: str):
        compiler = self._queryset(SENTINEL).query.get_compiler(using=alias)
        sql, params = compiler.as_sql()
        if list(params) != [SENTINEL]:
            return None  # not a one-parameter query: the ORM path
        columns = [column[0] for column in compiler.select[0:compiler.col_count]]
        if compiler.has_composite_fields(columns):
            return None
        # What results_iter would work out again on every call.
        return compiler, sql, compiler.get_converters(columns)

    def _rows(self, alias: str, entry, value, *, one: bool) -> list:
        compiler, sql, converters = entry[:3]
        with connections[alias].cursor() as cursor:
            cursor.execute(sql, [value])
            rows = cursor.fetchmany(1) if one else cursor.fetchall()
        if converters and rows:
            rows = list(compiler.apply_converters(rows, converters))
        return rows


class Prepared(_Compiled):
    """Model instances (with their ``select_related`` objects) of a one-parameter query."""

    def _queryset(self, value) -> QuerySet:
        return self.build(value)[:1]

    def _compile(self, alias: str):
        base = super()._compile(alias)
        if base is None:
            return None
        compiler = base[0]
        klass_info, select = compiler.klass_info, compiler.select
        start, end = klass_info["select_fields"][0], klass_info["select_fields"][-1] + 1
        init_list = [column[0].target.attname for column in select[start:end]]
        return (*base, klass_info["model"], start, end, init_list, get_related_populators(klass_info, select, alias))

    def first(self, value) -> Model | None:
        """The first row for ``value`` as a model instance (related objects filled in), or None.

        As unordered as the queryset: meant for a filter on a unique column.
        """
        alias, entry = self._alias_and_entry()
        if entry is None:
            return self.build(value).first()
        rows = self._rows(alias, entry, value, one=True)
        if not rows:
            return None
        row = rows[0]
        model_cls, start, end, init_list, populators = entry[3:]
        obj = model_cls.from_db(alias, init_list, row[start:end])
        for populator in populators:
            populator.populate(row, obj)
        return obj


class PreparedValues(_Compiled):
    """The rows (tuples) of a one-parameter ``values_list`` query."""

    def rows(self, value) -> list[tuple]:
        alias, entry = self._alias_and_entry()
        if entry is None:
            return list(self.build(value))
        return [tuple(row) for row in self._rows(alias, entry, value, one=False)]


def prep(field, value: Any) -> Any:
    """``value`` as ``field`` stores it (time zones, JSON), as the ORM's ``update`` does."""
    return field.get_db_prep_save(value, connection)


def assignments(model: type[Model], incs: dict[str, float], maxes: dict[str, float],
                sets: dict[str, Any]) -> tuple[list[str], list[Any]]:
    """``SET`` items for an existing row: col = col + x, col = max(col, x), col = value.

    CASE (not GREATEST/MAX) keeps it portable between SQLite and MySQL.
    """
    qn = connection.ops.quote_name
    field = model._meta.get_field
    parts: list[str] = []
    params: list[Any] = []
    for col, value in incs.items():
        c = qn(field(col).column)
        parts.append(f"{c} = {c} + %s")
        params.append(value)
    for col, value in maxes.items():
        c = qn(field(col).column)
        parts.append(f"{c} = CASE WHEN {c} < %s THEN %s ELSE {c} END")
        params += [value, value]
    for col, value in sets.items():
        parts.append(f"{qn(field(col).column)} = %s")
        params.append(prep(field(col), value))
    return parts, params


def update_sql(model: type[Model], keys: dict[str, Any], incs: dict[str, float] | None = None,
               maxes: dict[str, float] | None = None, sets: dict[str, Any] | None = None, *,
               at_least: dict[str, float] | None = None, any_of: dict[str, Sequence] | None = None) -> int:
    """One parameterised ``UPDATE`` of the rows matching ``keys`` (and col >= x for each of
    ``at_least``, col IN (...) for each of ``any_of``): col = col + x, col = max(col, x),
    col = value.  Returns the rows matched.

    Plain SQL for the per-run path (the run's state changes, the job row, the stats): the
    ORM spent several times longer building these statements than the database spent
    running them.
    """
    qn = connection.ops.quote_name
    field = model._meta.get_field
    parts, params = assignments(model, incs or {}, maxes or {}, sets or {})
    where = []
    for col, value in keys.items():
        where.append(f"{qn(field(col).column)} = %s")
        params.append(prep(field(col), value))
    for col, value in (at_least or {}).items():
        where.append(f"{qn(field(col).column)} >= %s")
        params.append(value)
    for col, values in (any_of or {}).items():
        where.append(f"{qn(field(col).column)} IN ({', '.join(['%s'] * len(values))})")
        params += [prep(field(col), value) for value in values]
    # Identifiers come from our own model definitions only; every value is a parameter.
    sql = f"UPDATE {qn(model._meta.db_table)} SET {', '.join(parts)} WHERE {' AND '.join(where)}"  # noqa: S608
    with transaction.mark_for_rollback_on_error(), connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def update_row(model: type[Model], pk, values: dict, *, state_in: tuple[str, ...] | None = None) -> int:
    """``model.objects.filter(pk=pk[, state__in=state_in]).update(**values)`` as plain SQL
    (:func:`update_sql`).

    Every run makes three state changes (admitted, running, final) and a job-row update.
    Plain values only; anything else (an F() expression, a relation, an unknown name)
    takes the ORM path.  Like ``update``, no signals and no ``auto_now``.
    """
    meta = model._meta
    try:
        fields = [meta.get_field(name) for name in values]
    except FieldDoesNotExist:
        fields = []
    if (not fields or len(fields) != len(values) or any(f.is_relation or not f.concrete for f in fields)
            or any(hasattr(v, "resolve_expression") for v in values.values())):
        rows = model.objects.filter(pk=pk)
        if state_in is not None:
            rows = rows.filter(state__in=state_in)
        return rows.update(**values)
    return update_sql(model, {meta.pk.name: pk}, sets=values,
                      any_of={"state": state_in} if state_in is not None else None)


def _run_with_job_and_slot(pk) -> QuerySet:
    from jobs.models import JobRun

    return JobRun.objects.select_related("job", "job__slot").filter(pk=pk)


def _open_alerts(job_id) -> QuerySet:
    from jobs.models import Alert

    return Alert.objects.filter(job_id=job_id, resolved_at__isnull=True).values_list("type", "severity")


# A run with its job and the job's slot: what the start and execute tasks read first.
run_with_job = Prepared(_run_with_job_and_slot)
# (type, severity) of a job's open alerts: read once after every run.
open_alerts = PreparedValues(_open_alerts)
