"""The shop's tasks. The worker runs them: ``conveyor worker tasks:app`` (from this directory)."""

import os

from conveyor import Conveyor, current_job

#: The shop's own database, and Conveyor's store in it (schema ``conveyor`` unless ?schema= says).
DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
app = Conveyor(os.environ.get("CONVEYOR_URL", DATABASE_URL))


@app.task
def ship(order_id: int) -> str:
    # A call to the carrier would pass current_job().key or the job id, so a repeated delivery
    # of this job books one parcel. The order's new status commits with the job's success:
    # once, and not at all if the task fails.
    current_job().execute("UPDATE orders SET status = 'shipped' WHERE id = %s", (order_id,))
    return f"order {order_id} shipped"
