import json

from django.db import connection, transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from shop.models import Order
from shop.tasks import app, ship


class OutOfStock(Exception):
    pass


def _check_stock(order: Order) -> None:
    if order.quantity > 3:
        raise OutOfStock(order.item)


@csrf_exempt
@require_POST
def create_order(request: HttpRequest) -> JsonResponse:
    """The job is written by the view's own transaction (``connection=``): the order and its job
    commit together, or roll back together."""
    data = json.loads(request.body)
    try:
        with transaction.atomic():
            order = Order.objects.create(item=data["item"], quantity=data["quantity"])
            # The psycopg connection under Django's, its transaction the atomic block's.
            job = ship.enqueue(order.id, connection=connection.connection)
            order.job_id = job.id
            order.save(update_fields=["job_id"])
            _check_stock(order)  # raises after the enqueue: both are rolled back
    except OutOfStock:
        return JsonResponse({"error": f"not enough {data['item']} in stock"}, status=409)
    return JsonResponse({"order": order.id, "job": job.id}, status=201)


@csrf_exempt
@require_POST
def create_order_on_commit(request: HttpRequest) -> JsonResponse:
    """The job is enqueued once the transaction has committed (``transaction.on_commit``): works
    with any store (Redis too), but a crash between the commit and the enqueue loses the job."""
    data = json.loads(request.body)
    try:
        with transaction.atomic():
            order = Order.objects.create(item=data["item"], quantity=data["quantity"])

            def enqueue() -> None:
                job = ship.enqueue(order.id)
                Order.objects.filter(id=order.id).update(job_id=job.id)

            transaction.on_commit(enqueue)  # never runs if the block rolls back
            _check_stock(order)
    except OutOfStock:
        return JsonResponse({"error": f"not enough {data['item']} in stock"}, status=409)
    return JsonResponse({"order": order.id}, status=201)


@require_GET
def order_status(request: HttpRequest, order_id: int) -> JsonResponse:
    order = Order.objects.filter(id=order_id).first()
    if order is None:
        return JsonResponse({"error": "no such order"}, status=404)
    job = {"id": order.job_id, "state": app.job(order.job_id).status()} if order.job_id else None
    return JsonResponse({"order": order.id, "status": order.status, "job": job})
