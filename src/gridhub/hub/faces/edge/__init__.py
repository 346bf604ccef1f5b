"""The edge upload face (/edge/v1): substations upload their stored LV-CAP rows here."""

from gridhub.hub.faces.edge.router import build_router

__all__ = ["build_router"]
