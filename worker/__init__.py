"""GPU workers: the Celery app, model loading and the render path."""
