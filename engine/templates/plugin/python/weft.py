"""Helpers for a weft connector in Python: typed errors, HTTP status to
error mapping, JSON and pagination. Written by `weft plugin new`; it is
yours to change.

A WIT `result<T, connector-error>` is a return value for `T` and a raised
`Err(...)` for the error: `raise not_found("no customer cus_1")`. A WIT
variant case is a dataclass named `<Variant>_<Case>`
(`types.ConnectorError_NotFound("...")`), an `option<T>` is `T` or `None`,
an enum an `Enum` (`types.Op.LIST`), a record a dataclass with snake_case
fields.
"""

import json
from urllib.parse import quote, urlencode

from componentize_py_types import Err
from wit_world.imports import http, log, types

# --- errors -----------------------------------------------------------------


def not_found(message):
    """The record or resource does not exist."""
    return Err(types.ConnectorError_NotFound(message))


def conflict(message):
    """The write clashes with existing state."""
    return Err(types.ConnectorError_Conflict(message))


def invalid_input(message):
    """The input is wrong; say which field."""
    return Err(types.ConnectorError_InvalidInput(message))


def unauthorized(message):
    """The credential is missing, wrong or expired."""
    return Err(types.ConnectorError_Unauthorized(message))


def forbidden(message):
    """The credential is valid but may not do this."""
    return Err(types.ConnectorError_Forbidden(message))


def rate_limited(message, retry_after_ms=None):
    """The vendor asked us to slow down (the host retries)."""
    return Err(types.ConnectorError_RateLimited(types.RateLimited(retry_after_ms, message)))


def unsupported(message):
    """This connector or vendor does not offer this."""
    return Err(types.ConnectorError_Unsupported(message))


def transient(message):
    """A failure that may pass if tried again (the host retries)."""
    return Err(types.ConnectorError_Transient(message))


def fatal(message):
    """Anything else."""
    return Err(types.ConnectorError_Fatal(message))


def vendor_message(body):
    """What a vendor's error body says, from the common shapes:
    `{"error": {"message"}}`, `{"error": "..."}`, `{"message": "..."}`,
    else the start of the body."""
    try:
        value = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace").strip()
    if isinstance(value, dict):
        error = value.get("error")
        if isinstance(error, dict):
            parts = [error.get("type"), error.get("message")]
            return ": ".join(str(p) for p in parts if p)
        if isinstance(error, str):
            return error
        for key in ("message", "detail", "error_description"):
            if isinstance(value.get(key), str):
                return value[key]
    return json.dumps(value)[:200]


def error_for_status(vendor, response):
    """The typed error for a non-2xx answer, naming the vendor, the status
    and what the vendor said: 400/422 invalid-input, 401 unauthorized, 403
    forbidden, 404/410 not-found, 409 conflict, 429 rate-limited (with
    Retry-After), 408 and 5xx transient, anything else fatal."""
    status = response.status
    message = f"{vendor}: HTTP {status}: {vendor_message(response.body)}"
    if status in (400, 422):
        return invalid_input(message)
    if status == 401:
        return unauthorized(message)
    if status == 403:
        return forbidden(message)
    if status in (404, 410):
        return not_found(message)
    if status == 409:
        return conflict(message)
    if status == 429:
        return rate_limited(message, retry_after_ms(response))
    if status == 408 or 500 <= status <= 599:
        return transient(message)
    return fatal(message)


def retry_after_ms(response):
    """`Retry-After` in milliseconds, when it is a number of seconds."""
    for name, value in response.headers:
        if name == "retry-after":
            try:
                return int(float(value) * 1000)
            except ValueError:
                return None
    return None


# --- HTTP -------------------------------------------------------------------


def url(ctx, path, query=None):
    """`path` joined to the connection's base URL, with `query` (a dict or
    a list of pairs; `None` values left out) encoded."""
    if query:
        pairs = query.items() if isinstance(query, dict) else query
        pairs = [(k, v) for k, v in pairs if v is not None]
        if pairs:
            path = f"{path}?{urlencode(pairs)}"
    return ctx.base_url + path


def segment(value):
    """`value` escaped as one URL path segment."""
    return quote(value, safe="")


def send(method, target, headers=None, body=None, idempotent=False):
    """Sends one request through the host (which adds the credential and
    applies the connection's limits). A failure to get any answer raises a
    typed error; a non-2xx answer is returned, for the caller to map."""
    request = http.Request(method, target, list(headers or []), body, idempotent)
    try:
        return http.send(request)
    except Err as error:
        failure = error.value
        message = f"HTTP {type(failure).__name__.split('_')[-1].lower()}: {failure.value}"
        if isinstance(failure, (http.HttpError_Timeout, http.HttpError_Connection)):
            raise transient(message) from None
        raise fatal(message) from None


def get_json(vendor, target):
    """GETs `target` and decodes its JSON; a non-2xx answer raises its
    typed error."""
    response = send(http.Method.GET, target, [("accept", "application/json")])
    if not 200 <= response.status <= 299:
        raise error_for_status(vendor, response)
    return decode(vendor, response.body)


def decode(vendor, body):
    """`body` as JSON, or a fatal error naming the vendor."""
    try:
        return json.loads(body)
    except ValueError as error:
        raise fatal(f"{vendor}: the answer is not JSON: {error}") from None


# --- records and pages --------------------------------------------------------


def record(value):
    """A record as the host takes it: one JSON object as text."""
    return json.dumps(value, separators=(",", ":"))


def page(records, next_cursor=None):
    """A page of `records` (dicts); `next_cursor` is `None` on the last page."""
    return types.Page([record(r) for r in records], next_cursor)


def filters(request):
    """The list request's filter object, `{}` when none."""
    if request.filter is None:
        return {}
    value = json.loads(request.filter)
    if not isinstance(value, dict):
        raise invalid_input("the filter must be a JSON object")
    return value


def info(message):
    """A log line recorded with the run."""
    log.log(log.Level.INFO, message)


def debug(message):
    """A log line for debugging (`--log weft=debug`)."""
    log.log(log.Level.DEBUG, message)
