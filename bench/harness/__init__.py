"""The benchmarks' harness, shared with the reliability suite.

Servers on free ports (``servers``), their databases (``databases``), wrk
bursts (``wrk``), servers measured in rotating rounds and their medians
(``rounds``), and the results written as Markdown to a committed file
(``results``). The benchmarks themselves are the scripts beside this package.
"""

from bench.harness.databases import (
    drop_postgres_database,
    ensure_postgres_database,
    migrate,
    postgres_url,
    prepare_database,
    recreate_postgres_database,
)
from bench.harness.results import commit, markdown_table, write_results
from bench.harness.rounds import Plan, Rotation, Target, add_plan_options, plan_from, rotate
from bench.harness.servers import ROOT, Server, free_port, serving, stop_servers_on_sigterm
from bench.harness.wrk import Burst, burst, write_script

__all__ = [
    "ROOT",
    "Burst",
    "Plan",
    "Rotation",
    "Server",
    "Target",
    "add_plan_options",
    "burst",
    "commit",
    "drop_postgres_database",
    "ensure_postgres_database",
    "free_port",
    "markdown_table",
    "migrate",
    "plan_from",
    "postgres_url",
    "prepare_database",
    "recreate_postgres_database",
    "rotate",
    "serving",
    "stop_servers_on_sigterm",
    "write_results",
    "write_script",
]
