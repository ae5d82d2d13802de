"""Celery workers: run the compression pipeline on jobs claimed from the database."""
