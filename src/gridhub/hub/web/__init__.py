"""The hub's web pages: for now the status page (sites, last upload, series, latest values, charts).

Server-rendered HTML (Jinja2, autoescaped) with a small script that refreshes the site list;
a login form over the hub's users, the session in an HttpOnly SameSite=Strict cookie. The pages
read the store and the access policy only through their interfaces (see :mod:`.status`).
"""

from __future__ import annotations

from gridhub.hub.web.router import COOKIE, build_router, install

__all__ = ["COOKIE", "build_router", "install"]
