"""Delivery tracking over HTTP: what was sent for an order, and resending a failed email."""

from __future__ import annotations

from aiohttp import web
from faust.web import View

from ..app import app, runtime
from .identity import allow
from .problems import conflict, not_found
from .views import _visible_order, json_response, principal_of


@app.page("/v1/orders/{order_id}/notifications")
class OrderNotificationsView(View):
    async def get(self, request: web.Request, order_id: str) -> web.Response:
        """Every email queued for the order (owner or admin), oldest first."""
        principal = await principal_of(request)
        allow(principal, scope="orders:read")
        await runtime.ready()
        await _visible_order(principal, order_id)
        return json_response({"items": await runtime.notifications.for_order(order_id), "next_cursor": None})


@app.page("/v1/notifications/{notification_id}")
class NotificationView(View):
    async def get(self, request: web.Request, notification_id: str) -> web.Response:
        """One email's delivery record (admin)."""
        allow(await principal_of(request), "admin")
        await runtime.ready()
        row = await runtime.notifications.get(notification_id)
        if row is None:
            raise not_found(f"no notification {notification_id}")
        return json_response(row)


@app.page("/v1/notifications/{notification_id}/retry")
class RetryNotificationView(View):
    async def post(self, request: web.Request, notification_id: str) -> web.Response:
        """Queue a failed email again with a fresh count of attempts (admin; the mailers are
        woken by NOTIFY): 202, or 409
        when it is not failed (sent, or still being tried)."""
        allow(await principal_of(request), "admin")
        await runtime.ready()
        row = await runtime.notifications.requeue(notification_id)
        if row is None:
            current = await runtime.notifications.get(notification_id)
            if current is None:
                raise not_found(f"no notification {notification_id}")
            raise conflict(f"notification {notification_id} is {current['status']}; only failed ones can be retried")
        return json_response(row, 202)
