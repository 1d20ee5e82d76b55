"""The ``imgfarm`` command: start services, manage keys, submit work and fetch results."""
