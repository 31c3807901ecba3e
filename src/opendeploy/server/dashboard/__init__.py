"""The dashboard at ``/ui``: server-rendered pages, live deployment grids, full hook logs."""

from opendeploy.server.dashboard.routes import Dashboard, dashboard_routes

__all__ = ["Dashboard", "dashboard_routes"]
