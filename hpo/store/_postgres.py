"""Optuna's RDB store on PostgreSQL with fewer statements per trial: same tables, same rows.

Stock ``RDBStorage`` goes through the ORM: reading a trial takes one query per child table,
and each write first loads the trial to check its state. On a trial of four params and three
reports that is 71 statements and 16 commits, most of them re-reading running trials. This
subclass replaces the hot paths with plain SQL on the same schema:

* a trial, or a study's new and running trials, in one statement (child rows as JSON arrays);
* each write in one guarded statement (``INSERT … SELECT … WHERE the trial is not finished``,
  upserts ``ON CONFLICT``); a second statement only to say why nothing was written;
* a new trial in two (lock the study row, then insert numbered by a fresh count, exactly as
  Optuna numbers them); a state change in one or two.

A worker's operations come in bursts (the ask and its suggests; a report and the pruner's reads)
separated by minutes of training, so one connection serves a burst and is closed once idle for
``linger_s``: a burst costs one connection instead of one per operation, and still no
connection is held while training. A refusal at the server's connection limit switches this
process to one connection per operation for a while, so a full server drains.

Rows are written exactly as Optuna writes them (naive UTC datetimes, enum names, JSON text), so
plain Optuna, ``optuna-dashboard`` and the ``optuna`` CLI read these studies unchanged. Rare
paths (enqueued trials, attributes, studies, best trial) stay on the stock code. Our reads
leave out one row per trial, its request id (``hpo:request``): nothing reads it from a trial
(a retry looks its request up in SQL), and every worker would otherwise parse every running
trial's on every refresh. Plain Optuna still shows it.
"""

from __future__ import annotations

import datetime
import functools
import json
import logging
import math
import time
from collections.abc import Container, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import optuna
import sqlalchemy
from optuna import distributions
from optuna.storages import RDBStorage
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial, TrialState

from hpo.store._base import (
    BUDGET_KEY,
    FINISH_KEY,
    NO_SLOT,
    REQUEST_KEY,
    REQUEUE_OF_KEY,
    NoSlotLeft,
    current_request,
    retried,
)
from hpo.store._connections import (
    DEFAULT_LINGER_S,
    DEFAULT_MAX_HOLD_S,
    LingeringConnection,
    ReleasingSessions,
)

logger = logging.getLogger(__name__)

_FINISHED = "('COMPLETE', 'PRUNED', 'FAIL')"
DEFAULT_RUNNING_REFRESH_S = 1.0

_TRIAL_COLUMNS = f"""
    t.trial_id, t.number, t.state::text, t.datetime_start, t.datetime_complete,
    (SELECT json_agg(json_build_array(p.param_name, p.param_value, p.distribution_json)
                     ORDER BY p.param_id)
       FROM trial_params p WHERE p.trial_id = t.trial_id),
    (SELECT json_agg(json_build_array(v.objective, v.value, v.value_type::text))
       FROM trial_values v WHERE v.trial_id = t.trial_id),
    (SELECT json_agg(json_build_array(a.key, a.value_json) ORDER BY a.trial_user_attribute_id)
       FROM trial_user_attributes a WHERE a.trial_id = t.trial_id),
    (SELECT json_agg(json_build_array(a.key, a.value_json) ORDER BY a.trial_system_attribute_id)
       FROM trial_system_attributes a WHERE a.trial_id = t.trial_id AND a.key <> '{REQUEST_KEY}'),
    (SELECT json_agg(json_build_array(i.step, i.intermediate_value,
                                      i.intermediate_value_type::text) ORDER BY i.step)
       FROM trial_intermediate_values i WHERE i.trial_id = t.trial_id)
"""

_GET_TRIAL = sqlalchemy.text(f"SELECT {_TRIAL_COLUMNS} FROM trials t WHERE t.trial_id = :trial_id")

# One row per matching trial, or one row of NULLs when the study exists but none match, or no
# row when the study does not exist: the existence check rides along.
_GET_TRIALS = sqlalchemy.text(
    f"""
    SELECT {_TRIAL_COLUMNS}
      FROM studies s
      LEFT JOIN trials t
        ON t.study_id = s.study_id
       AND (t.trial_id > :greater_than
            OR (t.trial_id = ANY(:included) AND (:all_included OR t.state <> 'RUNNING')))
       AND (CAST(:states AS text[]) IS NULL OR t.state::text = ANY(CAST(:states AS text[])))
     WHERE s.study_id = :study_id
     ORDER BY t.trial_id
    """
)

_LOCK_STUDY = sqlalchemy.text("SELECT study_id FROM studies WHERE study_id = :study_id FOR UPDATE")

# The budget a study may not exceed (running + finished trials), as one guard in a statement.
_BUDGET_FULL = f"""
    EXISTS (SELECT 1 FROM study_system_attributes b
             WHERE b.study_id = :study_id AND b.key = '{BUDGET_KEY}'
               AND CAST(b.value_json AS integer) <= (
                   SELECT count(*) FROM trials c
                    WHERE c.study_id = :study_id AND c.state IN ('COMPLETE', 'PRUNED', 'RUNNING')))
"""

# This request already made a trial of this study (a retry after the reply was lost).
_MADE_BY_REQUEST = f"""
    SELECT r.trial_id FROM trials r JOIN trial_system_attributes a ON a.trial_id = r.trial_id
     WHERE r.study_id = :study_id AND a.key = '{REQUEST_KEY}' AND a.value_json = :request
"""


def _insert_trial(after_failure: bool) -> sqlalchemy.TextClause:
    """A new running trial with its request id, in one statement, unless the budget is taken or
    (``after_failure``: an earlier attempt may have committed) this request made one already.

    Numbered like Optuna's count_past_trials: the study row is locked by the previous statement,
    and this statement's snapshot is taken after the lock was granted, so it sees every trial
    committed before ours. Its start is on the server's clock: until its first beat a trial's
    lease runs from its start (``_SILENCE``), judged on that one clock.
    """
    mine = f"AND NOT EXISTS ({_MADE_BY_REQUEST})" if after_failure else ""
    return sqlalchemy.text(
        f"""
        WITH t AS (
            INSERT INTO trials (number, study_id, state, datetime_start)
            SELECT count(*), :study_id, 'RUNNING', (now() AT TIME ZONE 'UTC') FROM trials
             WHERE study_id = :study_id
            HAVING NOT {_BUDGET_FULL} {mine}
            RETURNING trial_id, number, datetime_start
        ), a AS (
            INSERT INTO trial_system_attributes (trial_id, key, value_json)
            SELECT trial_id, '{REQUEST_KEY}', :request FROM t
        )
        SELECT trial_id, number, datetime_start FROM t
        """
    )


_INSERT_TRIAL = {after_failure: _insert_trial(after_failure) for after_failure in (False, True)}

_WHY_NO_TRIAL = sqlalchemy.text(f"SELECT ({_MADE_BY_REQUEST} LIMIT 1), {_BUDGET_FULL}")

_LOCK_STUDY_OF_TRIAL = sqlalchemy.text(
    """
    SELECT s.study_id FROM studies s JOIN trials t ON t.study_id = s.study_id
     WHERE t.trial_id = :trial_id FOR UPDATE OF s
    """
)

# A re-queued copy replaces one failed trial: at most one copy each.
_COPY_OF = sqlalchemy.text(
    f"""
    SELECT r.trial_id FROM trials r JOIN trial_system_attributes a ON a.trial_id = r.trial_id
     WHERE r.study_id = :study_id AND a.key = '{REQUEUE_OF_KEY}' AND a.value_json = :failed
     LIMIT 1
    """
)

_INSERT_WAITING = sqlalchemy.text(
    """
    INSERT INTO trials (number, study_id, state)
    SELECT count(*), :study_id, 'WAITING' FROM trials WHERE study_id = :study_id
    RETURNING trial_id
    """
)

_INSERT_PARAM_ROW = sqlalchemy.text(
    """
    INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json)
    VALUES (:trial_id, :name, CAST(:value AS double precision), :distribution)
    """
)

_INSERT_USER_ATTR = sqlalchemy.text(
    """
    INSERT INTO trial_user_attributes (trial_id, key, value_json)
    VALUES (:trial_id, :key, :value)
    ON CONFLICT (trial_id, key) DO UPDATE SET value_json = EXCLUDED.value_json
    """
)

# A worker's writes on its own trial are fenced by its lease: each is one statement that
# writes only while the trial is unfinished and holds the trial row (FOR SHARE) until it
# commits, so a sweeper's FAIL (FOR UPDATE) lands wholly before (the write then finds it FAIL
# and is refused: UpdateFinishedTrialError) or after it (and its re-queue sees the write).
_SET_USER_ATTR_IF_UNFINISHED = sqlalchemy.text(
    f"""
    INSERT INTO trial_user_attributes (trial_id, key, value_json)
    SELECT trial_id, :key, :value
      FROM trials WHERE trial_id = :trial_id AND state NOT IN {_FINISHED} FOR SHARE
    ON CONFLICT (trial_id, key) DO UPDATE SET value_json = EXCLUDED.value_json
    RETURNING trial_id
    """
)

_INSERT_SYSTEM_ATTR = sqlalchemy.text(
    """
    INSERT INTO trial_system_attributes (trial_id, key, value_json)
    VALUES (:trial_id, :key, :value)
    ON CONFLICT (trial_id, key) DO UPDATE SET value_json = EXCLUDED.value_json
    """
)

_TRIAL_STATE = sqlalchemy.text("SELECT state::text FROM trials WHERE trial_id = :trial_id")

# Retries look a trial up by its request id, and re-queues by the failed trial's id
# (_MADE_BY_REQUEST, _COPY_OF): without an index on the values, each ask scanned every request
# id of every study the database ever held (5 ms per ask after 17,000 trials, and growing). A
# partial index on our keys only (Optuna's own attributes, any size, stay out of it); Optuna
# clients ignore it. Made once, by the first process to open the store.
_LOOKUP_INDEX = "ix_hpo_trial_system_attributes_lookup"
_HAS_LOOKUP_INDEX = sqlalchemy.text(
    f"SELECT 1 FROM pg_indexes WHERE tablename = 'trial_system_attributes' "
    f"AND indexname = '{_LOOKUP_INDEX}'"
)
_CREATE_LOOKUP_INDEX = sqlalchemy.text(
    f"""
    CREATE INDEX IF NOT EXISTS {_LOOKUP_INDEX} ON trial_system_attributes (key, value_json)
     WHERE key IN ('{REQUEST_KEY}', '{REQUEUE_OF_KEY}')
    """
)

_PARAM_DISTRIBUTION_IN_STUDY = sqlalchemy.text(
    """
    SELECT p.distribution_json FROM trial_params p JOIN trials t ON t.trial_id = p.trial_id
     WHERE t.study_id = (SELECT study_id FROM trials WHERE trial_id = :trial_id)
       AND p.param_name = :name
     LIMIT 1
    """
)

_INSERT_PARAM = sqlalchemy.text(
    f"""
    INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json)
    SELECT trial_id, :name, CAST(:value AS double precision), :distribution
      FROM trials WHERE trial_id = :trial_id AND state NOT IN {_FINISHED} FOR SHARE
    ON CONFLICT (trial_id, param_name) DO NOTHING
    RETURNING param_id
    """
)

_UPSERT_INTERMEDIATE = sqlalchemy.text(
    f"""
    INSERT INTO trial_intermediate_values
           (trial_id, step, intermediate_value, intermediate_value_type)
    SELECT trial_id, :step, CAST(:value AS double precision),
           CAST(:value_type AS trialintermediatevaluetype)
      FROM trials WHERE trial_id = :trial_id AND state NOT IN {_FINISHED} FOR SHARE
    ON CONFLICT (trial_id, step) DO UPDATE
       SET intermediate_value = EXCLUDED.intermediate_value,
           intermediate_value_type = EXCLUDED.intermediate_value_type
    RETURNING trial_id
    """
)

# Popping a waiting trial, unless the budget is taken: the request id and a first heartbeat go
# with it (the study row is locked by the previous statement).
_START_WAITING = sqlalchemy.text(
    f"""
    WITH u AS (
        UPDATE trials SET state = 'RUNNING', datetime_start = :now
         WHERE trial_id = :trial_id AND state = 'WAITING' AND NOT {_BUDGET_FULL}
        RETURNING trial_id
    ), a AS (
        INSERT INTO trial_system_attributes (trial_id, key, value_json)
        SELECT trial_id, '{REQUEST_KEY}', :request FROM u
        ON CONFLICT (trial_id, key) DO UPDATE SET value_json = EXCLUDED.value_json
    ), h AS (
        INSERT INTO trial_heartbeats (trial_id, heartbeat)
        SELECT trial_id, (now() AT TIME ZONE 'UTC') FROM u
        ON CONFLICT (trial_id) DO UPDATE SET heartbeat = EXCLUDED.heartbeat
    )
    SELECT trial_id FROM u
    """
)

_WHY_NOT_STARTED = sqlalchemy.text(
    f"""
    SELECT t.state::text, a.value_json, {_BUDGET_FULL}
      FROM trials t
      LEFT JOIN trial_system_attributes a ON a.trial_id = t.trial_id AND a.key = '{REQUEST_KEY}'
     WHERE t.trial_id = :trial_id
    """
)

# A state change; a FAIL also records which request made it. A retry after a lost reply knows
# its own change: a COMPLETE or PRUNED trial was told by its owner (sweepers only fail), but a
# FAIL may be the owner's or a sweeper's (see ``hpo.store._retry``).
_SET_STATE = sqlalchemy.text(
    f"""
    WITH u AS (
        UPDATE trials
           SET state = CAST(:state AS trialstate),
               datetime_complete = CASE WHEN :finished THEN :now ELSE datetime_complete END
         WHERE trial_id = :trial_id AND state NOT IN {_FINISHED}
        RETURNING trial_id
    ), f AS (
        INSERT INTO trial_system_attributes (trial_id, key, value_json)
        SELECT trial_id, '{FINISH_KEY}', :request FROM u WHERE :attributed
        ON CONFLICT (trial_id, key) DO UPDATE SET value_json = EXCLUDED.value_json
    )
    SELECT trial_id FROM u
    """
)

# How long a running trial has been silent: since its last heartbeat (server clock), or since
# it started if it never beat (a trial whose owner died before its first beat is not hidden).
_SILENCE = """
    COALESCE((SELECT (now() AT TIME ZONE 'UTC') - h.heartbeat FROM trial_heartbeats h
               WHERE h.trial_id = t.trial_id),
             (now() AT TIME ZONE 'UTC') - t.datetime_start)
"""

# Failing a stale trial is one guarded transition: still running, still silent past the grace
# period; its reason and the request that failed it are written with it. Of two sweepers, one
# wins; only the winner re-queues. A trial row locked by another transaction is skipped, not
# waited for: its owner is writing to it (alive), or a session died holding it, which the
# server ends after its idle-in-transaction timeout (see hpo.store._open).
_FAIL_IF_STALE = sqlalchemy.text(
    f"""
    WITH u AS (
        UPDATE trials t SET state = 'FAIL', datetime_complete = :now
         WHERE t.trial_id = (SELECT trial_id FROM trials WHERE trial_id = :trial_id
                              FOR UPDATE SKIP LOCKED)
           AND t.state = 'RUNNING'
           AND {_SILENCE} > make_interval(secs => :grace_s)
           AND now() - pg_postmaster_start_time() > make_interval(secs => :grace_s)
        RETURNING trial_id
    ), f AS (
        INSERT INTO trial_system_attributes (trial_id, key, value_json)
        SELECT trial_id, '{FINISH_KEY}', :request FROM u
        ON CONFLICT (trial_id, key) DO UPDATE SET value_json = EXCLUDED.value_json
    )
    SELECT trial_id FROM u
    """
)

_UPSERT_VALUE = sqlalchemy.text(
    """
    INSERT INTO trial_values (trial_id, objective, value, value_type)
    VALUES (:trial_id, :objective, CAST(:value AS double precision),
            CAST(:value_type AS trialvaluetype))
    ON CONFLICT (trial_id, objective) DO UPDATE
       SET value = EXCLUDED.value, value_type = EXCLUDED.value_type
    """
)

# Database clock, in UTC whatever the session's time zone (a worker's PGTZ, a server zone with
# daylight saving): every lease is judged on one clock.
# A beat renews a running trial's lease only: a worker that wakes after its trial was failed
# (a frozen VM) learns it from its next beat and stops beating for it.
_BEAT = sqlalchemy.text(
    """
    INSERT INTO trial_heartbeats (trial_id, heartbeat)
    SELECT trial_id, (now() AT TIME ZONE 'UTC') FROM trials
     WHERE trial_id = :trial_id AND state = 'RUNNING'
    ON CONFLICT (trial_id) DO UPDATE SET heartbeat = EXCLUDED.heartbeat
    RETURNING trial_id
    """
)

# Stale: silent past the grace period, judged only once the server itself has been up for a
# grace period (after a restart nobody could beat; their leases are not expired by that).
_STALE = sqlalchemy.text(
    f"""
    SELECT t.trial_id FROM trials t
     WHERE t.study_id = :study_id AND t.state = 'RUNNING'
       AND {_SILENCE} > make_interval(secs => :grace_s)
       AND now() - pg_postmaster_start_time() > make_interval(secs => :grace_s)
    """
)


@functools.lru_cache(maxsize=1024)
def _distribution(distribution_json: str) -> distributions.BaseDistribution:
    """Parsed once per distinct JSON (a study has a handful); distributions are immutable."""
    return distributions.json_to_distribution(distribution_json)


def _utc_now() -> datetime.datetime:
    """Now as Optuna's RDB store writes datetimes: naive UTC."""
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def _local(utc: datetime.datetime | None) -> datetime.datetime | None:
    """A stored naive-UTC datetime as Optuna returns it: naive local time."""
    if utc is None:
        return None
    return utc.replace(tzinfo=datetime.timezone.utc).astimezone().replace(tzinfo=None)


def _float(number: float | None) -> float | None:
    """JSON writes 0.0 as 0: numbers from the JSON arrays are doubles in the table."""
    return None if number is None else float(number)


def _stored_value(value: float) -> tuple[float | None, str]:
    stored, kind = models.TrialValueModel.value_to_stored_repr(value)
    return stored, kind.name


def _value(stored: float | None, kind: str) -> float:
    return models.TrialValueModel.stored_repr_to_value(
        stored, models.TrialValueModel.TrialValueType[kind]
    )


def _intermediate(stored: float | None, kind: str) -> float:
    return models.TrialIntermediateValueModel.stored_repr_to_intermediate_value(
        stored, models.TrialIntermediateValueModel.TrialIntermediateValueType[kind]
    )


def _attr_row(trial_id: int, key: str, value: Any) -> dict[str, Any]:
    return {"trial_id": trial_id, "key": key, "value": json.dumps(value)}


def _frozen_trial(row: Sequence[Any]) -> FrozenTrial:
    """A FrozenTrial from one row of ``_TRIAL_COLUMNS``, as the stock store builds it."""
    trial_id, number, state, start, complete, params, values, user, system, steps = row
    dists = {name: _distribution(dist_json) for name, _, dist_json in params or ()}
    value_list: list[float] | None = None
    if values:
        value_list = [0.0] * len(values)
        for objective, stored, kind in values:
            value_list[objective] = _value(_float(stored), kind)
    return FrozenTrial(
        number=number,
        state=TrialState[state],
        value=None,
        values=value_list,
        datetime_start=_local(start),
        datetime_complete=_local(complete),
        params={name: dists[name].to_external_repr(float(v)) for name, v, _ in params or ()},
        distributions=dists,
        user_attrs={key: json.loads(v) for key, v in user or ()},
        system_attrs={key: json.loads(v) for key, v in system or ()},
        intermediate_values={step: _intermediate(_float(v), kind) for step, v, kind in steps or ()},
        trial_id=trial_id,
    )


class LeanPostgresStorage(RDBStorage):
    """``RDBStorage`` whose per-trial operations are single SQL statements (PostgreSQL only).

    Every error a stock store raises for these operations is raised the same way: ``KeyError``
    for a missing trial or study, ``UpdateFinishedTrialError`` for a write to a finished trial,
    ``StorageInternalError`` (chained to the driver's error) for a failed statement.

    Freshness: Optuna's trial cache re-reads every running trial of the study on every refresh
    (several times per trial: ask, each ``should_prune``), which costs O(workers) rows per
    operation. Here new trials and every change of a trial not known as RUNNING are always
    read, but trials known as RUNNING (their params, reports, attributes, and the state they
    finish in) are re-read at most every ``running_refresh_s``, and a WAITING trial another
    worker popped can look WAITING as long. Nothing that decides a slot reads this view: the
    budget is checked in the statements that start a trial. A single trial read
    (``get_trial``, used for one's own trial by pruners and ``tell``) is always fresh, and so
    is a first read of a study.
    """

    def __init__(
        self,
        url: str,
        engine_kwargs: dict[str, Any] | None = None,
        *,
        linger_s: float = DEFAULT_LINGER_S,
        max_hold_s: float = DEFAULT_MAX_HOLD_S,
        running_refresh_s: float = DEFAULT_RUNNING_REFRESH_S,
        **kwargs: Any,
    ) -> None:
        super().__init__(url, engine_kwargs, **kwargs)
        self._ensure_lookup_index()
        self._running_refresh_s = running_refresh_s
        self._running_read_at: dict[int, float] = {}
        self._linger_s = linger_s
        self._max_hold_s = max_hold_s
        self._attach_connection()

    def _ensure_lookup_index(self) -> None:
        try:
            with self.engine.connect() as conn:
                if conn.execute(_HAS_LOOKUP_INDEX).first() is None:
                    conn.execute(_CREATE_LOOKUP_INDEX)
                    conn.commit()
        except sqlalchemy.exc.ProgrammingError as e:  # a role that may not create indexes
            logger.warning(
                "could not create index %s (%s): lookups after lost replies scan the table",
                _LOOKUP_INDEX,
                type(getattr(e, "orig", None) or e).__name__,
            )

    def _attach_connection(self) -> None:
        self._kept = LingeringConnection(
            self.engine, linger_s=self._linger_s, max_hold_s=self._max_hold_s
        )
        self.scoped_session = ReleasingSessions(  # type: ignore[assignment]
            self.scoped_session, self._kept.close
        )

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state.pop("_kept", None)
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._attach_connection()

    def remove_session(self) -> None:
        """After each operation (``RetryingStorage`` calls it): end the ORM session, and close
        the connection unless it may linger for the next operation."""
        super().remove_session()
        self._kept.operation_done()

    @contextmanager
    def _connection(self, *, write: bool) -> Iterator[sqlalchemy.Connection]:
        nested = self._kept.current()
        if nested is not None:  # e.g. Optuna's UpdateFinishedTrialError message reads the trial
            yield nested
            return
        try:
            with self._kept.use() as conn:
                transaction = conn.begin()
                try:
                    yield conn
                except BaseException:
                    if transaction.is_active:  # a failed statement may have ended it already
                        transaction.rollback()
                    raise
                if write:
                    transaction.commit()
                else:
                    transaction.rollback()  # nothing to keep; not counted as a commit
        except sqlalchemy.exc.SQLAlchemyError as e:
            raise optuna.exceptions.StorageInternalError(
                f"a store statement failed: {type(getattr(e, 'orig', None) or e).__name__}"
            ) from e

    def _raise_unless_updatable(self, conn: sqlalchemy.Connection, trial_id: int) -> None:
        state = conn.execute(_TRIAL_STATE, {"trial_id": trial_id}).scalar()
        if state is None:
            raise KeyError(models.NOT_FOUND_MSG)
        self.check_trial_is_updatable(trial_id, TrialState[state])

    # Reads.
    def get_trial(self, trial_id: int) -> FrozenTrial:
        with self._connection(write=False) as conn:
            row = conn.execute(_GET_TRIAL, {"trial_id": trial_id}).first()
        if row is None:
            raise KeyError(models.NOT_FOUND_MSG)
        return _frozen_trial(row)

    def _get_trials(
        self,
        study_id: int,
        states: Container[TrialState] | None,
        included_trial_ids: set[int],
        trial_id_greater_than: int,
    ) -> list[FrozenTrial]:
        included = sorted(i for i in included_trial_ids if i <= trial_id_greater_than)
        state_names = None
        if states is not None:
            state_names = [s.name for s in TrialState if s in states]
        now = time.monotonic()
        all_included = now - self._running_read_at.get(study_id, -math.inf) >= (
            self._running_refresh_s
        )
        with self._connection(write=False) as conn:
            rows = conn.execute(
                _GET_TRIALS,
                {
                    "study_id": study_id,
                    "greater_than": trial_id_greater_than,
                    "included": included,
                    "all_included": all_included,
                    "states": state_names,
                },
            ).all()
        if all_included:
            self._running_read_at[study_id] = now
        if not rows:
            raise KeyError(models.NOT_FOUND_MSG)
        return [_frozen_trial(row) for row in rows if row[0] is not None]

    # Writes.
    def _create_new_trial(
        self, study_id: int, template_trial: FrozenTrial | None = None
    ) -> FrozenTrial:
        if template_trial is not None:
            if REQUEUE_OF_KEY in template_trial.system_attrs:
                return self._create_copy(study_id, template_trial)
            return super()._create_new_trial(study_id, template_trial)  # enqueued: stock path
        request = json.dumps(current_request())
        with self._connection(write=True) as conn:
            if conn.execute(_LOCK_STUDY, {"study_id": study_id}).first() is None:
                raise KeyError(models.NOT_FOUND_MSG)
            params = {"study_id": study_id, "request": request}
            row = conn.execute(_INSERT_TRIAL[retried()], params).first()
            if row is None:
                mine, _ = conn.execute(_WHY_NO_TRIAL, params).one()
                if mine is not None:  # made by this request before its reply was lost
                    found = conn.execute(_GET_TRIAL, {"trial_id": mine}).one()
                    return _frozen_trial(found)
                # Full when the insert looked (a slot freed since is taken at the next ask).
                raise NoSlotLeft(f"study {study_id}: {NO_SLOT}")
            trial_id, number, start = row
        return FrozenTrial(
            number=number,
            state=TrialState.RUNNING,
            value=None,
            values=None,
            datetime_start=_local(start),
            datetime_complete=None,
            params={},
            distributions={},
            user_attrs={},
            system_attrs={},
            intermediate_values={},
            trial_id=trial_id,
        )

    def _create_copy(self, study_id: int, template: FrozenTrial) -> FrozenTrial:
        """A waiting copy of a failed trial, unless one exists already (one per failed trial)."""
        failed = json.dumps(template.system_attrs[REQUEUE_OF_KEY])
        with self._connection(write=True) as conn:
            if conn.execute(_LOCK_STUDY, {"study_id": study_id}).first() is None:
                raise KeyError(models.NOT_FOUND_MSG)
            existing = conn.execute(_COPY_OF, {"study_id": study_id, "failed": failed}).scalar()
            if existing is None:
                trial_id = conn.execute(_INSERT_WAITING, {"study_id": study_id}).scalar_one()
                for name, value in template.params.items():
                    dist = template.distributions[name]
                    conn.execute(
                        _INSERT_PARAM_ROW,
                        {
                            "trial_id": trial_id,
                            "name": name,
                            "value": dist.to_internal_repr(value),
                            "distribution": distributions.distribution_to_json(dist),
                        },
                    )
                for statement, attrs in (
                    (_INSERT_USER_ATTR, template.user_attrs),
                    (_INSERT_SYSTEM_ATTR, template.system_attrs),
                ):
                    for key, value in attrs.items():
                        conn.execute(statement, _attr_row(trial_id, key, value))
                existing = trial_id
            row = conn.execute(_GET_TRIAL, {"trial_id": existing}).one()
        return _frozen_trial(row)

    def _set_trial_param(
        self,
        trial_id: int,
        param_name: str,
        param_value_internal: float,
        distribution: distributions.BaseDistribution,
        previous_distribution: distributions.BaseDistribution | None,
    ) -> None:
        with self._connection(write=True) as conn:
            if previous_distribution is None:  # once per param name and process
                previous = conn.execute(
                    _PARAM_DISTRIBUTION_IN_STUDY, {"trial_id": trial_id, "name": param_name}
                ).scalar()
                if previous is not None:
                    previous_distribution = _distribution(previous)
            if previous_distribution is not None:
                distributions.check_distribution_compatibility(previous_distribution, distribution)
            inserted = conn.execute(
                _INSERT_PARAM,
                {
                    "trial_id": trial_id,
                    "name": param_name,
                    "value": param_value_internal,
                    "distribution": distributions.distribution_to_json(distribution),
                },
            ).first()
            if inserted is None:  # finished or missing trial; or the param was already set
                self._raise_unless_updatable(conn, trial_id)

    def set_trial_param(
        self,
        trial_id: int,
        param_name: str,
        param_value_internal: float,
        distribution: distributions.BaseDistribution,
    ) -> None:
        self._set_trial_param(trial_id, param_name, param_value_internal, distribution, None)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        with self._connection(write=True) as conn:
            written = conn.execute(
                _SET_USER_ATTR_IF_UNFINISHED, _attr_row(trial_id, key, value)
            ).first()
            if written is None:
                self._raise_unless_updatable(conn, trial_id)

    def set_trial_intermediate_value(
        self, trial_id: int, step: int, intermediate_value: float
    ) -> None:
        stored, kind = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(
            intermediate_value
        )
        with self._connection(write=True) as conn:
            written = conn.execute(
                _UPSERT_INTERMEDIATE,
                {"trial_id": trial_id, "step": step, "value": stored, "value_type": kind.name},
            ).first()
            if written is None:
                self._raise_unless_updatable(conn, trial_id)

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        now = _utc_now()
        # Recorded only for a pop (RUNNING) and a FAIL: COMPLETE/PRUNED are judged by state.
        attributed = state in (TrialState.RUNNING, TrialState.FAIL)
        request = json.dumps(current_request()) if attributed else "null"
        with self._connection(write=True) as conn:
            if state == TrialState.RUNNING:  # taking an enqueued trial: only a WAITING one
                study_id = conn.execute(_LOCK_STUDY_OF_TRIAL, {"trial_id": trial_id}).scalar()
                if study_id is None:
                    raise KeyError(models.NOT_FOUND_MSG)
                params = {
                    "trial_id": trial_id,
                    "study_id": study_id,
                    "now": now,
                    "request": request,
                }
                if conn.execute(_START_WAITING, params).first() is None:
                    current, by, full = conn.execute(_WHY_NOT_STARTED, params).one()
                    if current == "RUNNING" and by == request:  # ours; its reply was lost
                        return True
                    if current == "WAITING" and full:
                        raise NoSlotLeft(f"trial {trial_id}: {NO_SLOT}")
                    self._raise_unless_updatable(conn, trial_id)
                    return False
            else:
                changed = conn.execute(
                    _SET_STATE,
                    {
                        "trial_id": trial_id,
                        "state": state.name,
                        "finished": state.is_finished(),
                        "attributed": state == TrialState.FAIL,
                        "now": now,
                        "request": request,
                    },
                ).first()
                if changed is None:
                    self._raise_unless_updatable(conn, trial_id)
                    raise AssertionError("unreachable: the trial is neither finished nor here")
            for objective, value in enumerate(values or ()):
                stored, kind = _stored_value(value)
                conn.execute(
                    _UPSERT_VALUE,
                    {
                        "trial_id": trial_id,
                        "objective": objective,
                        "value": stored,
                        "value_type": kind,
                    },
                )
        return True

    def record_heartbeat(self, trial_id: int) -> None:
        """Renew ``trial_id``'s lease; ``UpdateFinishedTrialError`` if it is finished (failed by
        a sweeper, say). A trial that is gone (its study deleted) is ignored, as in stock."""
        with self._connection(write=True) as conn:
            if conn.execute(_BEAT, {"trial_id": trial_id}).first() is None:
                state = conn.execute(_TRIAL_STATE, {"trial_id": trial_id}).scalar()
                if state is not None:
                    self.check_trial_is_updatable(trial_id, TrialState[state])

    def fail_if_stale(self, trial_id: int, user_attrs: dict[str, Any]) -> bool:
        """Fail ``trial_id`` if it is still running and silent past the grace period, writing
        ``user_attrs`` (its failure reason) with it. True only for the call that failed it."""
        with self._connection(write=True) as conn:
            failed = conn.execute(
                _FAIL_IF_STALE,
                {
                    "trial_id": trial_id,
                    "now": _utc_now(),
                    "grace_s": self.get_grace_period_s(),
                    "request": json.dumps(current_request()),
                },
            ).first()
            if failed is None:
                return False
            for key, value in user_attrs.items():
                conn.execute(_INSERT_USER_ATTR, _attr_row(trial_id, key, value))
        return True

    def get_grace_period_s(self) -> float:
        assert self.heartbeat_interval is not None
        return float(self.grace_period or 2 * self.heartbeat_interval)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        with self._connection(write=False) as conn:
            rows = conn.execute(
                _STALE, {"study_id": study_id, "grace_s": self.get_grace_period_s()}
            ).all()
        return [trial_id for (trial_id,) in rows]
