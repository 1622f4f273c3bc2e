"""The shop's Conveyor app and tasks. Django must be set up before this module is imported:
the web server does it; the worker imports shop.worker, which does it first."""

from django.conf import settings

from conveyor import Conveyor
from shop.models import Order

app = Conveyor(settings.CONVEYOR_URL)


@app.task
def ship(order_id: int) -> str:
    # The ORM in a task: each of the worker's threads gets its own Django connection.
    Order.objects.filter(id=order_id).update(status="shipped")
    return f"order {order_id} shipped"
