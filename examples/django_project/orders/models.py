"""An order, and whether the billing handler has seen it."""

from django.db import models


class Order(models.Model):
    number = models.IntegerField(unique=True)
    billed = models.BooleanField(default=False)
