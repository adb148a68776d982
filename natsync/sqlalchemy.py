"""The transactional outbox for SQLAlchemy (Flask-SQLAlchemy and any other SQLAlchemy app).

``pip install natsync[sqlalchemy]``.  Create the table once (``metadata.create_all`` or
an Alembic migration of :data:`metadata`, or :func:`create_outbox_table`), then write
events in the session's transaction::

    from natsync.sqlalchemy import publish_on_commit

    with Session(engine) as session, session.begin():
        session.add(Order(number=42))
        publish_on_commit(session, "orders.created", b"42")   # rolled back with the order

and run a relay (:func:`make_relay`; ``flask natsync worker`` runs one) that publishes
committed rows to JetStream exactly once (see :mod:`natsync._outbox`).

This module imports SQLAlchemy; :mod:`natsync` itself never does.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.orm import Session

from . import _outbox
from ._outbox import OutboxRow, OutboxSettings, OutboxStatus, Relay
from .client import Client
from .headers import HeadersInput

__all__ = [
    "SQLAlchemyOutboxStorage",
    "create_outbox_table",
    "make_relay",
    "metadata",
    "outbox_table",
    "publish_on_commit",
]

#: The :class:`sqlalchemy.MetaData` holding the outbox table (for ``create_all`` or Alembic).
metadata: MetaData = MetaData()

#: The outbox table, ``natsync_outbox`` (the same columns as the Django model's).
outbox_table: Table = Table(
    "natsync_outbox",
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
    Column("subject", String(_outbox.MAX_SUBJECT), nullable=False),
    Column("payload", LargeBinary(), nullable=False, default=b""),
    Column("headers", JSON(), nullable=True),
    Column("msg_id", String(_outbox.MAX_MSG_ID), nullable=False),
    Column(
        "created",
        DateTime(timezone=True),
        nullable=False,
        default=lambda: datetime.datetime.now(datetime.timezone.utc),
    ),
    Column("available_at", Float(), nullable=False, default=0.0),
    Column("attempts", Integer(), nullable=False, default=0),
    Column("last_error", Text(), nullable=False, default=""),
    Column("failed", Boolean(), nullable=False, default=False),
    Index("natsync_outbox_due", "failed", "available_at", "id"),
    Index("natsync_outbox_subject", "subject", "id"),
)


def create_outbox_table(engine: Engine) -> None:
    """Create the outbox table on *engine* if it does not exist (``metadata.create_all``)."""
    metadata.create_all(engine, tables=[outbox_table])


def publish_on_commit(
    session: Session,
    subject: str,
    payload: bytes | bytearray | memoryview | str = b"",
    headers: HeadersInput | None = None,
    *,
    msg_id: str | None = None,
    max_payload: int = 1024 * 1024,
) -> None:
    """Write an event to the outbox in *session*'s transaction; a relay publishes it after the commit.

    The row is flushed with the session's other changes: rolled back with them, committed
    with them.  Everything is checked now (subject, headers, the size against
    *max_payload*), so a bad event raises before anything commits.  The relay publishes
    it to JetStream with ``Nats-Msg-Id`` = *msg_id* (or an id made for the row) and the
    given *headers* unchanged.

    Args:
        session: the session whose transaction the event belongs to.
        subject: the subject (a stream must capture it).
        payload: the message body (str is sent as UTF-8).
        headers: message headers, stored with the row.
        msg_id: the ``Nats-Msg-Id`` (de-duplication key) to publish with.
        max_payload: the server's ``max_payload`` (the Flask extension passes its
            client's last known value).

    Raises:
        natsync.BadSubjectError, natsync.BadHeaderError, natsync.MaxPayloadError,
        TypeError, ValueError: for a bad event; nothing is written.
    """
    data, pairs, mid = _outbox.check_event(subject, payload, headers, msg_id, max_payload)
    session.execute(insert(outbox_table).values(subject=subject, payload=data, headers=pairs, msg_id=mid))


class SQLAlchemyOutboxStorage:
    """The outbox table through SQLAlchemy Core, on *engine*."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def claim(self, limit: int, lease: float, now: float) -> list[OutboxRow]:
        """See :meth:`natsync._outbox.OutboxStorage.claim`."""
        t = outbox_table
        with self.engine.begin() as conn:
            q = (
                select(t.c.id, t.c.subject, t.c.payload, t.c.headers, t.c.msg_id, t.c.attempts)
                .where(t.c.failed.is_(False), t.c.available_at <= now)
                .order_by(t.c.id)
                .limit(limit)
            )
            if conn.dialect.name == "sqlite":
                # No row locks: a write first takes the database's write lock for this
                # short transaction, so relays claim one after the other.
                conn.execute(update(t).where(t.c.id == -1).values(attempts=0))
            else:
                q = q.with_for_update(skip_locked=True)
            rows = [OutboxRow(r[0], r[1], bytes(r[2]), r[3], r[4], r[5] + 1) for r in conn.execute(q)]
            if not rows:
                return []
            ids = [r.id for r in rows]
            earliest = {
                s: first
                for s, first in conn.execute(
                    select(t.c.subject, func.min(t.c.id))
                    .where(
                        t.c.failed.is_(False), t.c.subject.in_({r.subject for r in rows}), t.c.id.not_in(ids)
                    )
                    .group_by(t.c.subject)
                )
            }
            ok = _outbox.earliest_per_subject(rows, earliest)
            if ok:
                conn.execute(
                    update(t)
                    .where(t.c.id.in_([r.id for r in ok]))
                    .values(available_at=now + lease, attempts=t.c.attempts + 1)
                )
            return ok

    def settle(
        self,
        done: Sequence[int],
        retry: Sequence[tuple[int, str, float]],
        failed: Sequence[tuple[int, str]],
    ) -> None:
        """See :meth:`natsync._outbox.OutboxStorage.settle`."""
        t = outbox_table
        now = time.time()
        with self.engine.begin() as conn:
            if done:
                conn.execute(delete(t).where(t.c.id.in_(list(done))))
            for row_id, error, delay in retry:
                conn.execute(
                    update(t)
                    .where(t.c.id == row_id)
                    .values(last_error=error[:2000], available_at=now + delay)
                )
            for row_id, error in failed:
                conn.execute(update(t).where(t.c.id == row_id).values(last_error=error[:2000], failed=True))

    def status(self, now: float) -> OutboxStatus:
        """See :meth:`natsync._outbox.OutboxStorage.status`."""
        t = outbox_table
        with self.engine.connect() as conn:
            depth, oldest = conn.execute(
                select(func.count(), func.min(t.c.created)).where(t.c.failed.is_(False))
            ).one()
            nfailed = conn.execute(select(func.count()).where(t.c.failed.is_(True))).scalar_one()
            rows = [
                {"id": i, "subject": s, "attempts": a, "last_error": e, "created": c.isoformat()}
                for i, s, a, e, c in conn.execute(
                    select(t.c.id, t.c.subject, t.c.attempts, t.c.last_error, t.c.created)
                    .where(t.c.failed.is_(True))
                    .order_by(t.c.id)
                    .limit(20)
                )
            ]
        age: float | None = None
        if oldest is not None:
            if oldest.tzinfo is None:  # SQLite keeps no zone: the value was written in UTC
                oldest = oldest.replace(tzinfo=datetime.timezone.utc)
            age = max(0.0, (datetime.datetime.now(datetime.timezone.utc) - oldest).total_seconds())
        return OutboxStatus(int(depth), age, int(nfailed), rows)

    def retry_failed(self, ids: Sequence[int] | None = None) -> int:
        """Put failed rows (all, or those in *ids*) back in the queue; return how many."""
        t = outbox_table
        stmt = update(t).where(t.c.failed.is_(True))
        if ids:
            stmt = stmt.where(t.c.id.in_(list(ids)))
        with self.engine.begin() as conn:
            return int(conn.execute(stmt.values(failed=False, available_at=0.0, attempts=0)).rowcount)

    def release(self) -> None:
        """Nothing to do: each call checks a connection out of the pool and back."""


def make_relay(
    engine: Engine,
    client: Callable[[], Client],
    settings: OutboxSettings | dict[str, Any] | None = None,
) -> Relay:
    """A relay publishing the outbox rows of *engine* with the client *client()* returns.

    Args:
        engine: the database.
        client: returns the client to publish with (called each round).
        settings: :class:`natsync._outbox.OutboxSettings` or a dict of its fields.

    Raises:
        TypeError, ValueError: for bad settings.
    """
    if not isinstance(settings, OutboxSettings):
        settings = OutboxSettings.from_mapping(settings, "outbox settings")
    return Relay(SQLAlchemyOutboxStorage(engine), client, settings, name="natsync-outbox-sqlalchemy")
