"""Code shared by the api and the worker: settings, database, storage, job states."""
