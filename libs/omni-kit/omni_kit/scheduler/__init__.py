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

Speed (bench suite journey_timers, bench/results/latest-journey_timers.md; durable PostgreSQL on this 2-core
machine while other tenants used 1.9 of its cores): with 1,000,000 jobs waiting, jobs due 2,000 a second
fired on time with p50/p99 lateness 0.05/0.26 s (trivial handler) and 0.06/0.59 s (a handler writing one
row per job in the job's transaction), against 0.01/0.06 s for a bare SKIP LOCKED + DELETE loop over the
same table; a backlog of 60,000 due at once went at 4,386 and 3,092 jobs/s (the bare loop: 8,532/s, so
51% and 36% of it); the worker's process peaked at 107 MiB. A profile of the worker finds its process
waiting on PostgreSQL most of the time (epoll and socket sends), the Python per job (building Job objects,
about 10 us) a small part. Two changes got it there: claims that do not wait for their WAL flush, and the
next batch claimed while one runs (before them: 2,986 and 2,706 jobs/s against the bare loop's 18,169/s in
the same run, 16% and 15%). Claiming the next batch inside the completing transaction (one commit a round,
as the bare loop) was tried too and fired fewer jobs a second than claiming ahead. The claim's index,
(kind, due_at) of jobs with a due time, is left as it is: the due jobs are its head, and the waiting
million and the claimed jobs (due at their lease's end) lie beyond now and are never read; an index of
unclaimed jobs only would not shorten that scan, and runs whose lease ran out would need another.
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
