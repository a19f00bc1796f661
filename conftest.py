"""Collects the documentation's examples (README.md, docs/) as tests: see tests/docs/examples.py.

At the top of the repository because README.md is: pytest asks the conftest files above a
file whether to collect it.
"""

from tests.docs.examples import docs_page, pytest_collect_file

__all__ = ["docs_page", "pytest_collect_file"]
