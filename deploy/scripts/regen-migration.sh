#!/usr/bin/env bash
# Development only: regenerate the initial migration from the models (before the first release).
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -f diff3m/db/migrations/versions/0001_*.py /tmp/diff3m-gen.sqlite
.venv/bin/python - <<'PY'
from alembic import command
from diff3m.db.migrate import alembic_config
command.revision(alembic_config("sqlite:////tmp/diff3m-gen.sqlite"), message="initial schema",
                 autogenerate=True, rev_id="0001")
PY
