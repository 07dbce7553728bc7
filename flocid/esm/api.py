"""The ``/2015-03-31/event-source-mappings/`` routes on the Lambda Quart app: parse, call
``EsmService``, render (errors go through the app's one ``LambdaError`` handler)."""

from __future__ import annotations

from typing import Any

from quart import Response, request
from quart_trio import QuartTrio

from flocid.api.app import _body, _json, _max_items, ctx_of
from flocid.control import Ctx
from flocid.esm.service import EsmService


def register_esm_routes(app: QuartTrio, esm: EsmService) -> None:
    settings = esm.settings

    def ctx() -> Ctx:
        return ctx_of(settings.default_region, settings.default_account)

    async def create_esm() -> Response:
        return _json(await esm.create(ctx(), await _body()), 202)

    async def list_esms() -> Response:
        return _json(esm.list(
            ctx(), function_name=request.args.get("FunctionName"),
            source_arn=request.args.get("EventSourceArn"), marker=request.args.get("Marker"),
            max_items=_max_items(),
        ))

    async def get_esm(uid: str) -> Response:
        return _json(esm.get(uid))

    async def update_esm(uid: str) -> Response:
        return _json(await esm.update(ctx(), uid, await _body()), 202)

    async def delete_esm(uid: str) -> Response:
        return _json(await esm.delete(uid), 202)

    base = "/2015-03-31/event-source-mappings"
    for path in (base, base + "/"):
        app.add_url_rule(path, "esm_create" + path[-1], create_esm, methods=["POST"])
        app.add_url_rule(path, "esm_list" + path[-1], list_esms, methods=["GET"])
    route: Any = base + "/<uid>"
    app.add_url_rule(route, "esm_get", get_esm, methods=["GET"])
    app.add_url_rule(route, "esm_update", update_esm, methods=["PUT"])
    app.add_url_rule(route, "esm_delete", delete_esm, methods=["DELETE"])
