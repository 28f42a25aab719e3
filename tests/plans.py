"""What PostgreSQL plans for a statement as a service runs it: prepared, after its first executions."""

from __future__ import annotations

import re

from sqlalchemy.ext.asyncio import AsyncEngine


async def generic_plan(engine: AsyncEngine, statement: str) -> str:
    """The generic plan of a statement with positional ($1) or named (:name) parameters, as EXPLAIN text.

    Every parameter is given as NULL: a generic plan does not look at the values.
    """
    names = list(dict.fromkeys(re.findall(r"(?<![:\w]):(\w+)", statement)))
    for number, name in enumerate(names, start=1):
        statement = re.sub(rf"(?<![:\w]):{name}\b", f"${number}", statement)
    count = max((int(n) for n in re.findall(r"\$(\d+)", statement)), default=0)
    async with engine.connect() as connection:
        # SET LOCAL and the transaction's rollback leave the pooled connection as it was.
        await connection.exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")
        await connection.exec_driver_sql(f"PREPARE planned AS {statement}")
        try:
            arguments = ", ".join(["NULL"] * count)
            rows = (await connection.exec_driver_sql(f"EXPLAIN EXECUTE planned({arguments})")).all()
        finally:
            await connection.exec_driver_sql("DEALLOCATE planned")
            await connection.rollback()
    return "\n".join(row[0] for row in rows)
