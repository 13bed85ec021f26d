"""Delivery tracking over HTTP: what was sent for an order, and resending a failed email."""

from __future__ import annotations

from aiohttp import web

from ..schemas import NotificationListQuery, parse
from .identity import allow
from .problems import conflict, not_found
from .views import ApiView, json_response, paged


class OrderNotificationsView(ApiView):
    async def get(self, request: web.Request, order_id: str) -> web.Response:
        """Every email queued for the order (owner or admin), oldest first."""
        api = self.api
        principal = await api.principal_of(request)
        allow(principal, scope="orders:read")
        await api.runtime.ready()
        await api.visible_order(principal, order_id)
        return json_response({"items": await api.runtime.notifications.for_order(order_id), "next_cursor": None})


class NotificationsView(ApiView):
    async def get(self, request: web.Request) -> web.Response:
        """Failed emails, the most recently failed first (admin, or a key with `ops`)."""
        api = self.api
        allow(await api.principal_of(request), "admin", scope="ops")
        query = parse(NotificationListQuery, request.query)
        await api.runtime.ready()
        return await paged(api.runtime.notifications.list_failed(limit=query.limit, cursor=query.cursor))


class NotificationView(ApiView):
    async def get(self, request: web.Request, notification_id: str) -> web.Response:
        """One email's delivery record (admin)."""
        api = self.api
        allow(await api.principal_of(request), "admin", scope="ops")
        await api.runtime.ready()
        row = await api.runtime.notifications.get(notification_id)
        if row is None:
            raise not_found(f"no notification {notification_id}")
        return json_response(row)


class RetryNotificationView(ApiView):
    async def post(self, request: web.Request, notification_id: str) -> web.Response:
        """Queue a failed email again with a fresh count of attempts (admin; the mailers are
        woken by NOTIFY): 202, or 409
        when it is not failed (sent, or still being tried)."""
        api = self.api
        allow(await api.principal_of(request), "admin", scope="ops")
        await api.runtime.ready()
        row = await api.runtime.notifications.requeue(notification_id)
        if row is None:
            current = await api.runtime.notifications.get(notification_id)
            if current is None:
                raise not_found(f"no notification {notification_id}")
            raise conflict(f"notification {notification_id} is {current['status']}; only failed ones can be retried")
        return json_response(row, 202)


# The views and their paths, as `web.register` adds them.
ROUTES: tuple[tuple[str, type[ApiView]], ...] = (
    ("/v1/orders/{order_id}/notifications", OrderNotificationsView),
    ("/v1/notifications", NotificationsView),
    ("/v1/notifications/{notification_id}", NotificationView),
    ("/v1/notifications/{notification_id}/retry", RetryNotificationView),
)
