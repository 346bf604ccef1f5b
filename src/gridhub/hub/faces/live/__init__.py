"""The live updates face (/live/v1): WebSocket subscriptions to collections and series (see docs/live.md)."""

from gridhub.hub.faces.live.router import PATH, build_router

__all__ = ["PATH", "build_router"]
