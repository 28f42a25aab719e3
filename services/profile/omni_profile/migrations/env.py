from alembic import context

from omni_kit.db import run_alembic_env

run_alembic_env(context)
