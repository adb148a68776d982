"""A Flask app whose events must not be lost: Flask-SQLAlchemy, the outbox and JetStream.

Run it (with a nats-server with JetStream on 127.0.0.1:4222, or set FLASK_NATS_URL)::

    cd examples/flask_app
    flask --app outbox_app natsync worker     # relays the outbox and runs the handler
    flask --app outbox_app run

    curl -X POST localhost:5000/orders/42     # order and event commit together
    flask --app outbox_app natsync outbox status

``FLASK_SQLALCHEMY_DATABASE_URI`` picks the database (default: a SQLite file here).
"""

from __future__ import annotations

import os

from flask import Flask, jsonify
from flask.typing import ResponseReturnValue
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import natsync
from natsync.flask import NATS
from natsync.sqlalchemy import create_outbox_table


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)
nats = NATS()


class Order(db.Model):  # type: ignore[name-defined,misc]
    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[int] = mapped_column(unique=True)


def create_app() -> Flask:
    """The app factory: the database, the NATS extension, the stream and the tables."""
    app = Flask(__name__)
    app.config["NATS_URL"] = "nats://127.0.0.1:4222"
    app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite:///" + os.path.abspath("shop.sqlite3")
    app.config.from_prefixed_env()  # FLASK_NATS_URL, FLASK_SQLALCHEMY_DATABASE_URI, ...
    db.init_app(app)
    nats.init_app(app)
    with app.app_context():
        db.create_all()
        create_outbox_table(db.engine)

    @app.post("/orders/<int:number>")
    def create_order(number: int) -> ResponseReturnValue:
        db.session.add(Order(number=number))
        # written in the same transaction; published to JetStream after the commit
        nats.publish_on_commit("orders.created", str(number), {"Shop-Order": str(number)})
        db.session.commit()
        return jsonify({"order": number, "pid": os.getpid()}), 201

    return app


@nats.consume(stream="ORDERS", durable="billing", subject="orders.created")
def bill(msg: natsync.Msg) -> None:
    """Runs in `flask natsync worker`; acked on return, redelivered if it raises."""
    print(f"billing order {msg.data.decode()}", flush=True)


app = create_app()
