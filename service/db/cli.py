"""Command-line commands as units of work, for any click app (``Database.command`` for Quart's)."""

from service.db._cli import Runner, Setting, in_unit_of_work

__all__ = ["Runner", "Setting", "in_unit_of_work"]
