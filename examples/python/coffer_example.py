#!/usr/bin/env python3
"""Use Coffer from Python with only the standard library.

HTTP/1.1 over cofferd's unix socket (spec/API.md): wrap and unwrap a secret,
get a data key, and handle errors by their code, retrying (with backoff, up
to a deadline) only the codes that mean the request did nothing: sealed,
audit_unavailable, no_leader, too_many_requests (after Retry-After). Never
outcome_unknown: that write may have been applied; read before retrying.

    COFFER_SOCKET=/tmp/coffer.sock python3 coffer_example.py --key dev
"""

import argparse
import base64
import http.client
import json
import os
import random
import socket
import sys
import time

RETRYABLE = {"sealed", "audit_unavailable", "no_leader", "too_many_requests"}


class CofferError(Exception):
    """An error answered by cofferd: HTTP status, API code, message, request id."""

    def __init__(self, status, code, message, request_id):
        super().__init__(f"{code}: {message} (request {request_id})")
        self.status, self.code, self.message, self.request_id = status, code, message, request_id


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=10):
        super().__init__("coffer", timeout=timeout)
        self.unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


class Coffer:
    def __init__(self, socket_path=None, max_elapsed=30.0):
        self.path = socket_path or os.environ.get("COFFER_SOCKET", "/run/coffer/coffer.sock")
        self.max_elapsed = max_elapsed

    def request(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        deadline = time.monotonic() + self.max_elapsed
        backoff = 0.05
        while True:
            conn = UnixHTTPConnection(self.path)
            try:
                headers = {"Content-Type": "application/json"} if data is not None else {}
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
            finally:
                conn.close()
            if 200 <= resp.status < 300:
                return json.loads(raw) if raw.strip() else {}
            try:
                err = json.loads(raw)["error"]
            except (ValueError, KeyError):
                err = {"code": "internal", "message": raw[:120].decode(errors="replace")}
            e = CofferError(resp.status, err["code"], err["message"], resp.getheader("X-Request-Id", ""))
            if e.code not in RETRYABLE:
                raise e
            wait = backoff * random.uniform(0.5, 1.0)
            if e.code == "too_many_requests" and (resp.getheader("Retry-After") or "").isdigit():
                wait = max(wait, int(resp.getheader("Retry-After")))
            if time.monotonic() + wait > deadline:
                raise e
            time.sleep(wait)
            backoff = min(backoff * 2, 2.0)

    def wrap(self, key, plaintext, aad=None):
        body = {"plaintext": base64.b64encode(plaintext).decode()}
        if aad:
            body["aad"] = base64.b64encode(aad).decode()
        return self.request("POST", f"/v1/keys/{key}/wrap", body)["ciphertext"]

    def unwrap(self, key, ciphertext, aad=None):
        body = {"ciphertext": ciphertext}
        if aad:
            body["aad"] = base64.b64encode(aad).decode()
        # A bytearray, so that the caller can overwrite it after use.
        return bytearray(base64.b64decode(self.request("POST", f"/v1/keys/{key}/unwrap", body)["plaintext"]))

    def datakey(self, key, nbytes=32):
        out = self.request("POST", f"/v1/keys/{key}/datakey", {"bytes": nbytes})
        return bytearray(base64.b64decode(out["plaintext"])), out["ciphertext"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--key", default="dev")
    args = ap.parse_args()
    c = Coffer()

    ct = c.wrap(args.key, b"api-token-123", aad=b"python-example")
    pt = c.unwrap(args.key, ct, aad=b"python-example")
    print("round trip:", pt.decode())
    pt[:] = bytes(len(pt))  # overwrite the plaintext once done

    dk, dk_ct = c.datakey(args.key)
    again = c.unwrap(args.key, dk_ct)
    print("data key:", len(dk), "bytes, unwraps to the same:", dk == again)
    dk[:] = bytes(len(dk))
    again[:] = bytes(len(again))

    try:
        c.unwrap(args.key, ct, aad=b"another context")
    except CofferError as e:
        print("wrong aad:", e.status, e.code)

    try:
        c.request("GET", "/v1/keys/no-such-key")
    except CofferError as e:
        print("missing key:", e.status, e.code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
