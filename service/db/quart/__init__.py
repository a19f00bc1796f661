"""The layer's Quart binding: ``Database(app)``, a unit of work per request.

Imported on its own (``from service.db.quart import Database``), so that the layer
(``service.db``) loads neither Quart nor werkzeug for a script or a job.
"""

from service.db.quart._extension import Database, streaming_body

__all__ = ["Database", "streaming_body"]
