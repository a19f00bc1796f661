"""The layer's session listeners, installed by one explicit call: ``install()``.

Each module keeps its listeners' code and a ``listen()`` that registers them on
the layer's own session class (``_session._Session``), never on sessions other
code makes. The first unit of work installs them (``UnitOfWork.__init__``);
importing a module installs nothing.
"""

from __future__ import annotations

from service.db import _callbacks, _loading, _readonly, _session

__all__ = ["install"]

_installed = False


def install() -> None:
    """Register the layer's session listeners, once per process."""
    global _installed
    if _installed:
        return
    _installed = True
    _session.listen()  # writes, for the failures that cost them (``RolledBackError``)
    _callbacks.listen()  # on-commit callbacks, kept until the outermost commit
    _readonly.listen()  # read-only units refuse to flush
    _loading.listen()  # read-only units refuse writes; lazy loads refused with a clear error
