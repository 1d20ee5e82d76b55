"""Dispatch: hands committed jobs from Postgres to the model queues in Redis (fair share,
shallow queues), takes back lost and expired ones, and exports the farm's gauges. Imports
only ``shared``, never ``worker``: it must not load torch."""
