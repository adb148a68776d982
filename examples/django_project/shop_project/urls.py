"""URLs of the example project."""

from django.urls import path
from orders import views

import natsync.django.views

urlpatterns = [
    path("orders/<int:order_id>", views.create_order),
    path("orders/<int:order_id>/rollback", views.create_order_then_fail),
    path("events/<int:number>", views.record_event),
    path("greet/<str:name>", views.greet),
    path("health/nats", natsync.django.views.health),
]
