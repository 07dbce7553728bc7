"""The HTTP face of flocid: Quart-Trio routes for the Lambda REST API, thin by design.

Each route parses the path, query and body, calls the control plane (or the invoke service) and
renders the answer. Errors from the domain are rendered in exactly one place (``_lambda_error``)
with AWS's wire shape: the status, an ``X-Amzn-ErrorType`` header and a ``{"Type": "User",
"message"|"Message": ...}`` body. Nothing else reaches a client: an unexpected exception becomes a
500 ``ServiceException`` without a traceback (the traceback goes to the log).
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from typing import Any

from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from flocid.api.invoke import ctx_from_authorization
from flocid.control import ControlPlane, Ctx
from flocid.lambda_.errors import (
    InvalidRequestContent,
    LambdaError,
    RequestTooLarge,
    ServiceError,
    UnknownOperation,
    ValidationError,
)

log = logging.getLogger("flocid.api")

# CreateFunction requests may carry a 50 MiB zip base64-encoded; AWS's own cap (peers.md 1.10 item 34).
MAX_REQUEST_BYTES = 70167211




def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    data = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
    resp = Response(data, status=status, content_type="application/json")
    resp.headers["x-amzn-RequestId"] = str(uuid.uuid4())
    for k, val in (headers or {}).items():
        resp.headers[k] = val
    return resp


def _empty(status: int = 204) -> Response:
    resp = Response(b"", status=status)
    resp.headers["x-amzn-RequestId"] = str(uuid.uuid4())
    return resp


def render_error(exc: LambdaError) -> Response:
    resp = _json(exc.body(), exc.status, exc.headers)
    resp.headers["X-Amzn-ErrorType"] = exc.code
    return resp


def ctx_of(default_region: str, default_account: str) -> Ctx:
    return ctx_from_authorization(request.headers.get("Authorization", ""), default_region, default_account)


async def _body() -> Any:
    raw = await request.get_data(cache=False)
    if not raw:
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequestContent(f"Could not parse request body into json: {exc}") from exc


def _max_items() -> int | None:
    raw = request.args.get("MaxItems")
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError as exc:
        raise ValidationError(
            f"1 validation error detected: Value '{raw}' at 'maxItems' failed to satisfy constraint: "
            "Member must have value greater than or equal to 1"
        ) from exc


def create_app(control: ControlPlane) -> QuartTrio:
    app = QuartTrio("flocid")
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES
    app.config["BODY_TIMEOUT"] = 300
    app.config["RESPONSE_TIMEOUT"] = 1000
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    settings = control.settings

    def ctx() -> Ctx:
        return ctx_of(settings.default_region, settings.default_account)

    def base_url() -> str:
        return request.host_url.rstrip("/")

    @app.errorhandler(LambdaError)
    async def _lambda_error(exc: LambdaError) -> Response:
        return render_error(exc)

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> Response:
        if exc.code == 413:
            return render_error(RequestTooLarge(
                f"Request must be smaller than {MAX_REQUEST_BYTES} bytes for the CreateFunction operation"
            ))
        if exc.code in (404, 405):
            return render_error(UnknownOperation(None))
        return render_error(InvalidRequestContent(exc.description))

    @app.errorhandler(Exception)
    async def _unexpected(exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return render_error(ServiceError("An internal error occurred in flocid; see its log."))

    # ---- functions ---------------------------------------------------------------------------

    @app.post("/2015-03-31/functions")
    @app.post("/2015-03-31/functions/")
    async def create_function() -> Response:
        return _json(await control.create_function(ctx(), await _body()), 201)

    @app.get("/2015-03-31/functions/")
    @app.get("/2015-03-31/functions")
    async def list_functions() -> Response:
        return _json(control.list_functions(
            ctx(), marker=request.args.get("Marker"), max_items=_max_items(),
            function_version=request.args.get("FunctionVersion"),
        ))

    @app.get("/2015-03-31/functions/<name>")
    async def get_function(name: str) -> Response:
        return _json(control.get_function(ctx(), name, request.args.get("Qualifier"), base_url()))

    @app.get("/2015-03-31/functions/<name>/configuration")
    async def get_function_configuration(name: str) -> Response:
        return _json(control.get_function_configuration(ctx(), name, request.args.get("Qualifier")))

    @app.put("/2015-03-31/functions/<name>/configuration")
    async def update_function_configuration(name: str) -> Response:
        return _json(await control.update_function_configuration(ctx(), name, await _body()))

    @app.put("/2015-03-31/functions/<name>/code")
    async def update_function_code(name: str) -> Response:
        return _json(await control.update_function_code(ctx(), name, await _body()))

    @app.delete("/2015-03-31/functions/<name>")
    async def delete_function(name: str) -> Response:
        await control.delete_function(ctx(), name, request.args.get("Qualifier"))
        return _empty(204)

    @app.get("/_flocid/code/<code_id>.zip")
    async def download_code(code_id: str) -> Response:
        if not re.fullmatch(r"[0-9a-f]{64}", code_id) or not control.code.has(code_id):
            return Response(b"", status=404)
        import trio

        data = await trio.to_thread.run_sync(control.code.get_zip, code_id)
        return Response(data, status=200, content_type="application/zip")

    # ---- versions and aliases ----------------------------------------------------------------

    @app.post("/2015-03-31/functions/<name>/versions")
    async def publish_version(name: str) -> Response:
        status, body = await control.publish_version(ctx(), name, await _body())
        return _json(body, status)

    @app.get("/2015-03-31/functions/<name>/versions")
    async def list_versions(name: str) -> Response:
        return _json(control.list_versions(ctx(), name, request.args.get("Marker"), _max_items()))

    @app.post("/2015-03-31/functions/<name>/aliases")
    async def create_alias(name: str) -> Response:
        return _json(await control.create_alias(ctx(), name, await _body()), 201)

    @app.get("/2015-03-31/functions/<name>/aliases")
    async def list_aliases(name: str) -> Response:
        return _json(control.list_aliases(
            ctx(), name, request.args.get("FunctionVersion"), request.args.get("Marker"), _max_items()
        ))

    @app.get("/2015-03-31/functions/<name>/aliases/<alias>")
    async def get_alias(name: str, alias: str) -> Response:
        return _json(control.get_alias(ctx(), name, alias))

    @app.put("/2015-03-31/functions/<name>/aliases/<alias>")
    async def update_alias(name: str, alias: str) -> Response:
        return _json(await control.update_alias(ctx(), name, alias, await _body()))

    @app.delete("/2015-03-31/functions/<name>/aliases/<alias>")
    async def delete_alias(name: str, alias: str) -> Response:
        await control.delete_alias(ctx(), name, alias)
        return _empty(204)

    # ---- policy ------------------------------------------------------------------------------

    @app.post("/2015-03-31/functions/<name>/policy")
    async def add_permission(name: str) -> Response:
        return _json(await control.add_permission(
            ctx(), name, request.args.get("Qualifier"), await _body()
        ), 201)

    @app.get("/2015-03-31/functions/<name>/policy")
    async def get_policy(name: str) -> Response:
        return _json(control.get_policy(ctx(), name, request.args.get("Qualifier")))

    @app.delete("/2015-03-31/functions/<name>/policy/<sid>")
    async def remove_permission(name: str, sid: str) -> Response:
        await control.remove_permission(
            ctx(), name, sid, request.args.get("Qualifier"), request.args.get("RevisionId")
        )
        return _empty(204)

    # ---- tags --------------------------------------------------------------------------------

    @app.get("/2017-03-31/tags/<arn>")
    async def list_tags(arn: str) -> Response:
        return _json(control.list_tags(ctx(), arn))

    @app.post("/2017-03-31/tags/<arn>")
    async def tag_resource(arn: str) -> Response:
        await control.tag_resource(ctx(), arn, await _body())
        return _empty(204)

    @app.delete("/2017-03-31/tags/<arn>")
    async def untag_resource(arn: str) -> Response:
        keys = request.args.getlist("tagKeys")
        await control.untag_resource(ctx(), arn, keys or None)
        return _empty(204)

    # ---- concurrency -------------------------------------------------------------------------

    @app.put("/2017-10-31/functions/<name>/concurrency")
    async def put_concurrency(name: str) -> Response:
        return _json(await control.put_function_concurrency(ctx(), name, await _body()))

    @app.get("/2019-09-30/functions/<name>/concurrency")
    async def get_concurrency(name: str) -> Response:
        return _json(control.get_function_concurrency(ctx(), name))

    @app.delete("/2017-10-31/functions/<name>/concurrency")
    async def delete_concurrency(name: str) -> Response:
        await control.delete_function_concurrency(ctx(), name)
        return _empty(204)

    # ---- function URL configs ----------------------------------------------------------------

    @app.post("/2021-10-31/functions/<name>/url")
    async def create_url(name: str) -> Response:
        return _json(await control.create_url_config(
            ctx(), name, request.args.get("Qualifier"), await _body()), 201)

    @app.get("/2021-10-31/functions/<name>/url")
    async def get_url(name: str) -> Response:
        return _json(control.get_url_config(ctx(), name, request.args.get("Qualifier")))

    @app.put("/2021-10-31/functions/<name>/url")
    async def update_url(name: str) -> Response:
        return _json(await control.update_url_config(
            ctx(), name, request.args.get("Qualifier"), await _body()))

    @app.delete("/2021-10-31/functions/<name>/url")
    async def delete_url(name: str) -> Response:
        await control.delete_url_config(ctx(), name, request.args.get("Qualifier"))
        return _empty(204)

    @app.get("/2021-10-31/functions/<name>/urls")
    async def list_urls(name: str) -> Response:
        return _json(control.list_url_configs(ctx(), name, request.args.get("Marker"), _max_items()))

    # ---- code signing, account -----------------------------------------------------------------

    @app.get("/2020-06-30/functions/<name>/code-signing-config")
    async def get_code_signing(name: str) -> Response:
        return _json(control.get_code_signing_config(ctx(), name))

    @app.get("/2016-08-19/account-settings/")
    @app.get("/2016-08-19/account-settings")
    async def account_settings() -> Response:
        c = ctx()
        n = sum(1 for (r, a, _n) in control.functions if r == c.region and a == c.account)
        total = sum(st.latest.code_size + sum(x.code_size for x in st.versions.values())
                    for (r, a, _n), st in control.functions.items() if r == c.region and a == c.account)
        return _json({
            "AccountLimit": {
                "TotalCodeSize": 80530636800, "CodeSizeUnzipped": 262144000, "CodeSizeZipped": 52428800,
                "ConcurrentExecutions": settings.region_concurrency_limit,
                "UnreservedConcurrentExecutions": settings.region_concurrency_limit
                - control.reserved_total(c.region, c.account),
            },
            "AccountUsage": {"TotalCodeSize": total, "FunctionCount": n},
        })

    return app
