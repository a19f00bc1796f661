"""The personal-finance ledger: users, accounts, entries, transfers, over the unit of work."""
