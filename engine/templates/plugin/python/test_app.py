"""Tests of the connector, natively (`./test.sh`): `FakeVendor` stands in
for the host's `http.send` (and keeps the `log` lines), so no network and
no wasm are needed."""

import json
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "bindings"))

from componentize_py_types import Err  # noqa: E402
from wit_world.imports import http, log, types  # noqa: E402

import app  # noqa: E402


class FakeVendor:
    """Answers `http.send` from a table of (method, url) → (status, JSON),
    and records the requests it was sent."""

    def __init__(self, answers):
        self.answers = answers
        self.requests = []
        self.logged = []

    def log(self, level, message):
        self.logged.append((level, message))

    def send(self, request):
        self.requests.append(request)
        key = (request.method, request.url)
        if key not in self.answers:
            raise Err(http.HttpError_Denied(f"no fake answer for {key}"))
        status, body = self.answers[key]
        return http.Response(status, [("content-type", "application/json")], json.dumps(body).encode())


CTX = types.Context("https://vendor.test", [])


class ConnectorTests(unittest.TestCase):
    def serve(self, answers):
        fake = FakeVendor(answers)
        for module, name, stand_in in ((http, "send", fake.send), (log, "log", fake.log)):
            self.addCleanup(setattr, module, name, getattr(module, name))
            setattr(module, name, stand_in)
        return fake

    def test_list_pages_with_the_last_id_as_cursor(self):
        get = http.Method.GET
        self.serve({
            (get, "https://vendor.test/v1/customers?limit=2"): (200, {"data": [{"id": "c3"}, {"id": "c2"}], "has_more": True}),
            (get, "https://vendor.test/v1/customers?limit=2&starting_after=c2"): (200, {"data": [{"id": "c1"}], "has_more": False}),
        })
        first = app.Plugin().list(CTX, types.ListRequest("customers", None, 2, None))
        self.assertEqual(first.next_cursor, "c2")
        second = app.Plugin().list(CTX, types.ListRequest("customers", "c2", 2, None))
        self.assertEqual([json.loads(r)["id"] for r in second.records], ["c1"])
        self.assertIsNone(second.next_cursor)

    def test_an_unknown_or_deleted_customer_is_absent(self):
        get = http.Method.GET
        self.serve({
            (get, "https://vendor.test/v1/customers/nope"): (404, {"error": {"type": "invalid_request_error", "message": "No such customer"}}),
            (get, "https://vendor.test/v1/customers/gone"): (200, {"id": "gone", "deleted": True}),
        })
        self.assertIsNone(app.Plugin().get(CTX, "customers", "nope"))
        self.assertIsNone(app.Plugin().get(CTX, "customers", "gone"))

    def test_a_wrong_key_is_unauthorized_naming_the_vendor(self):
        self.serve({
            (http.Method.GET, "https://vendor.test/v1/customers?limit=1"): (401, {"error": {"message": "Invalid API Key"}}),
        })
        with self.assertRaises(Err) as raised:
            app.Plugin().list(CTX, types.ListRequest("customers", None, 1, None))
        self.assertIsInstance(raised.exception.value, types.ConnectorError_Unauthorized)
        self.assertIn("HTTP 401", raised.exception.value.value)


if __name__ == "__main__":
    unittest.main()
