"""What the ledger benchmarks serve: ``service.app:app`` of the checkout first on ``PYTHONPATH``.

Each process that imports it logs where ``service`` came from, so that the
harness can check a server runs the checkout it is meant to
(``bench.checkouts.check_origin``). This directory holds nothing else: it goes
on the path before the checkout, whose own ``bench`` package may differ.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import service
from service.app import app

__all__ = ["app"]

ORIGIN = Path(service.__file__).resolve().parent.parent
print(f"bench_served: pid {os.getpid()} serves {ORIGIN}", file=sys.stderr, flush=True)
