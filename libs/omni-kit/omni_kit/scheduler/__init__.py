"""Durable due work on PostgreSQL: jobs scheduled in the caller's transaction, run by a worker when due.

Every service's database holds one table, scheduled_jobs (created by create_jobs_table in its
migrations). A job is a kind (what to do, e.g. "gateway.delivery_attempt"), a key (which one, e.g. a
message id; a kind and key are one job however often scheduled), a due time and a small JSON payload.

    await schedule(session, "gateway.delivery_attempt", str(message.id), timedelta(seconds=30))

    worker = JobWorker(runtime.transaction)
    worker.register("gateway.delivery_attempt", handler, lease=timedelta(minutes=2), batch_size=50)
    await worker.run()

Workers claim due jobs in batches with FOR UPDATE SKIP LOCKED and a lease, so replicas share the work and
a job whose worker died runs again when its lease runs out; a job's effect and its completion commit in one
transaction; failures back off and are finally parked. See worker.py for the details.
"""

from omni_kit.scheduler.schedule import DueAt, cancel, schedule, schedule_many, scheduled_due
from omni_kit.scheduler.tables import create_jobs_table, drop_jobs_table, jobs_metadata, jobs_table
from omni_kit.scheduler.worker import Backoff, Job, JobHandler, JobKind, JobWorker, LeaseLost, Transaction

__all__ = [
    "Backoff",
    "DueAt",
    "Job",
    "JobHandler",
    "JobKind",
    "JobWorker",
    "LeaseLost",
    "Transaction",
    "cancel",
    "create_jobs_table",
    "drop_jobs_table",
    "jobs_metadata",
    "jobs_table",
    "schedule",
    "schedule_many",
    "scheduled_due",
]
