"""Every route of the dashboard and the REST API, added to the application in one place."""

from __future__ import annotations

from aiohttp import web

from dashboard import admin_pages, api, class_pages, device_pages, pages


def add_routes(app: web.Application) -> None:
    app.add_routes(api.routes)
    for module_routes in (pages.routes, admin_pages.routes, class_pages.routes, device_pages.routes):
        app.add_routes(module_routes)
    app.router.add_static("/static", pages.STATIC)
