"""The thin submission API: validates, writes jobs to the database, hands them to the broker."""
