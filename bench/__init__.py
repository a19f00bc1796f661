"""Benchmarks of the unit-of-work layer: run ``python bench/uow.py`` (not part of the tests)."""
