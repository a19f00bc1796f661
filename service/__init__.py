"""A personal-finance ledger JSON API built on a task-scoped unit of work."""
