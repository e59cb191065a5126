"""A small real OpenID Connect issuer on 127.0.0.1, shaped like a Keycloak realm, for the authentication tests.

It signs RS256 JWTs with its own RSA key and serves, under ``/realms/<realm>``:

* the realm document with ``public_key`` (what MONAI Label 0.8.5 fetches, as from Keycloak);
* ``/.well-known/openid-configuration`` (discovery: issuer, token and JWKS endpoints);
* ``/protocol/openid-connect/certs`` (JWKS);
* ``/protocol/openid-connect/token`` (resource-owner password grant, as MONAI Label's ``/auth/token`` and the
  3D Slicer plugin use it).

Tokens carry Keycloak's claims: ``preferred_username``, ``email``, ``name`` and ``realm_access.roles``.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, Iterable, Optional, Sequence, Tuple

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class OIDCIssuer:
    """Use as a context manager; ``realm_uri`` is what ``MONAI_LABEL_AUTH_REALM_URI`` points to."""

    def __init__(self, realm: str = "monailabel", client_id: str = "monailabel-app",
                 users: Optional[Dict[str, Tuple[str, Sequence[str]]]] = None, keycloak: bool = True):
        """``keycloak=False``: a plain OIDC issuer, whose realm document has no ``public_key`` (keys via JWKS only)."""
        self.realm, self.client_id, self.keycloak = realm, client_id, keycloak
        self.users = dict(users or {})  # username -> (password, roles)
        self.key, self.kid = new_key(), uuid.uuid4().hex
        self.requests: list = []
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.realm_uri = f"http://127.0.0.1:{self.port}/realms/{realm}"
        self._server: Optional[ThreadingHTTPServer] = None

    # ------------------------------------------------------------------ tokens
    def token(self, username: str, roles: Iterable[str], expires_in: float = 300,
              key: Optional[rsa.RSAPrivateKey] = None, kid: Optional[str] = None) -> str:
        now = int(time.time())
        claims = {"iss": self.realm_uri, "sub": str(uuid.uuid5(uuid.NAMESPACE_DNS, username)), "typ": "Bearer",
                  "azp": self.client_id, "iat": now, "exp": int(now + expires_in), "preferred_username": username,
                  "email": f"{username}@example.org", "name": username.title(),
                  "realm_access": {"roles": list(roles)}}
        return jwt.encode(claims, key or self.key, algorithm="RS256", headers={"kid": kid or self.kid})

    def public_key_b64(self) -> str:
        der = self.key.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
        return base64.b64encode(der).decode()

    def jwks(self) -> dict:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [{**jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}]}

    def discovery(self) -> dict:
        base = f"{self.realm_uri}/protocol/openid-connect"
        return {"issuer": self.realm_uri, "authorization_endpoint": f"{base}/auth", "token_endpoint": f"{base}/token",
                "jwks_uri": f"{base}/certs", "grant_types_supported": ["password", "authorization_code"],
                "id_token_signing_alg_values_supported": ["RS256"]}

    # ------------------------------------------------------------------ HTTP
    def _handler(self):
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                issuer.requests.append(("GET", self.path))
                prefix = f"/realms/{issuer.realm}"
                realm_doc = {"realm": issuer.realm, "token-service": f"{issuer.realm_uri}/protocol/openid-connect"}
                if issuer.keycloak:
                    realm_doc["public_key"] = issuer.public_key_b64()
                routes = {prefix: lambda: realm_doc,
                          f"{prefix}/.well-known/openid-configuration": issuer.discovery,
                          f"{prefix}/protocol/openid-connect/certs": issuer.jwks}
                route = routes.get(self.path.split("?")[0].rstrip("/"))
                self._send(200, route()) if route else self._send(404, {"error": "not found"})

            def do_POST(self):
                issuer.requests.append(("POST", self.path))
                if self.path != f"/realms/{issuer.realm}/protocol/openid-connect/token":
                    return self._send(404, {"error": "not found"})
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in urllib.parse.parse_qs(self.rfile.read(length).decode()).items()}
                user = issuer.users.get(form.get("username", ""))
                if form.get("grant_type") != "password" or form.get("client_id") != issuer.client_id:
                    return self._send(400, {"error": "unauthorized_client"})
                if user is None or user[0] != form.get("password"):
                    return self._send(401, {"error": "invalid_grant", "error_description": "Invalid user credentials"})
                token = issuer.token(form["username"], user[1])
                self._send(200, {"access_token": token, "token_type": "Bearer", "expires_in": 300,
                                 "scope": "openid profile email"})

        return Handler

    def __enter__(self) -> "OIDCIssuer":
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
