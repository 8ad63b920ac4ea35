"""Celery workers: claim jobs, run the training engine, report to the database."""
