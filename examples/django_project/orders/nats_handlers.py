"""NATS handlers of the orders app, found by ``python manage.py natsync_worker``."""

import natsync
from natsync.django import subscribe

from .models import Order


@subscribe("svc.greet", queue="greeters")
def greet_service(msg: natsync.Msg) -> str:
    """Answer requests on svc.greet: the return value is the reply."""
    return f"hello, {msg.data.decode()}"


@subscribe("orders.created", queue="billing")
def bill_order(msg: natsync.Msg) -> None:
    """Mark a new order billed (the ORM works in handlers)."""
    number = int(msg.data)
    Order.objects.filter(number=number).update(billed=True)
    print(f"billed order {number}", flush=True)
