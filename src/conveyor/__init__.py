"""Conveyor: a distributed task queue for Python.

Priorities, delays, retries with backoff, a dead letter queue, at-least-once delivery with
leases and heartbeats, and exactly-once effects through idempotency keys and effects committed
with the acknowledgement.
"""

from conveyor.app import AsyncTask, Conveyor, Job, Task, TaskOptions
from conveyor.context import JobContext, current_job
from conveyor.errors import (
    ArgumentError,
    ConfigurationError,
    ConveyorError,
    DuplicateId,
    JobCancelled,
    JobFailed,
    JobNotFound,
    KeyConflict,
    PayloadTooLarge,
    QueueFull,
    RateLimited,
    ResultTooLarge,
    Retry,
    SerializationError,
    Snooze,
    StoreUnavailable,
    UnknownTask,
)
from conveyor.hooks import Hook, JobLogFilter, with_headers
from conveyor.limits import Limit
from conveyor.records import CancelAnswer, Cancelled, JobInfo, LimitInfo, Message, Progress, Rule
from conveyor.retry import RetryPolicy

__all__ = [
    "ArgumentError",
    "AsyncTask",
    "CancelAnswer",
    "Cancelled",
    "ConfigurationError",
    "Conveyor",
    "ConveyorError",
    "DuplicateId",
    "Hook",
    "Job",
    "JobCancelled",
    "JobContext",
    "JobFailed",
    "JobInfo",
    "JobLogFilter",
    "JobNotFound",
    "KeyConflict",
    "Limit",
    "LimitInfo",
    "Message",
    "PayloadTooLarge",
    "Progress",
    "QueueFull",
    "RateLimited",
    "ResultTooLarge",
    "Retry",
    "RetryPolicy",
    "Rule",
    "SerializationError",
    "Snooze",
    "StoreUnavailable",
    "Task",
    "TaskOptions",
    "UnknownTask",
    "current_job",
    "with_headers",
]
__version__ = "0.1.0"
