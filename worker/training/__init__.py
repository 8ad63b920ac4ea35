"""The training engine: plain functions and callbacks; no Celery, SQL or HTTP here."""
