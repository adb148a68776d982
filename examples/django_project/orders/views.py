"""Views: publish on commit, request/reply to a service."""

import os

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from natsync.django import get_client, publish_on_commit

from .models import Order


@csrf_exempt
@require_POST
def create_order(request: HttpRequest, order_id: int) -> JsonResponse:
    with transaction.atomic():
        Order.objects.create(number=order_id)
        # sent only if the transaction commits
        publish_on_commit("orders.created", str(order_id))
    return JsonResponse({"order": order_id, "pid": os.getpid()}, status=201)


@csrf_exempt
@require_POST
def create_order_then_fail(request: HttpRequest, order_id: int) -> JsonResponse:
    try:
        with transaction.atomic():
            Order.objects.create(number=order_id)
            publish_on_commit("orders.created", str(order_id))
            raise ValueError("payment declined")
    except ValueError as e:
        # rolled back: no order, and nothing was announced
        return JsonResponse({"order": order_id, "error": str(e)}, status=402)


@csrf_exempt
@require_POST
def record_event(request: HttpRequest, number: int) -> JsonResponse:
    """An event that must not be lost: written to the outbox in the order's transaction."""
    with transaction.atomic():
        Order.objects.create(number=number)
        # a relay publishes it to JetStream after the commit, exactly once
        publish_on_commit("events.created", str(number), durable=True)
    return JsonResponse({"event": number, "pid": os.getpid()}, status=201)


@require_GET
def greet(request: HttpRequest, name: str) -> JsonResponse:
    # NATS down or no service: NatsUnavailableMiddleware answers 503 with JSON
    reply = get_client().request("svc.greet", name.encode(), timeout=2.0)
    return JsonResponse({"greeting": reply.data.decode(), "pid": os.getpid()})
