"""The pipeline: from a complete study to results at the PACS (Celery tasks over DB state)."""
