"""The HTTP routes, one module per area. Each route is thin: what it needs comes in as a
dependency (`personalize.service.deps`), the work is done elsewhere.

`ROUTERS` is the order `create_app` includes them in, which is also the order of the paths
in /openapi.json.
"""

from __future__ import annotations

from personalize.service.routes import cds_hooks, health, model, recommendations

ROUTERS = (recommendations.router, model.router, cds_hooks.router, health.router)

__all__ = ["ROUTERS"]
