"""MONAI Label's authentication (``MONAI_LABEL_AUTH_ENABLE``) made to work, and closed where it leaves gaps.

MONAI Label 0.8.5 verifies bearer tokens in ``monailabel.endpoints.user.auth.from_token`` with
``jwt.decode(token, key, options=...)`` and no ``algorithms``: PyJWT 2 refuses that call, so with auth enabled
every token, valid or not, is answered 401.  ``from_token`` here is the same check (signature with the realm's key,
expiry, claims mapped by ``MONAI_LABEL_AUTH_TOKEN_*``) with the algorithms given (asymmetric only: a token signed
with ``none`` or an HMAC secret is refused).  The key is the Keycloak realm document's ``public_key`` (what MONAI
Label expects), or, for an OpenID Connect issuer without one, the issuer's JWKS (``jwks_uri`` of its discovery
document).  An unreachable issuer is a 503, not a 500.

``install_auth`` puts it in place, guards ``POST /reload`` (open in MONAI Label) and answers a refused login at
``POST /auth/token`` with 401 (MONAI Label: 500); the other endpoints' roles are in ``roles.py`` / ``route_guard.py``.
"""

from __future__ import annotations

import functools
import logging

logger = logging.getLogger(__name__)

ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]


@functools.lru_cache(maxsize=8)
def _jwks_client(realm_uri: str):
    import jwt

    from monailabel.endpoints.user.auth import open_id_configuration

    jwks_uri = open_id_configuration(realm_uri).get("jwks_uri")
    if not jwks_uri:
        raise RuntimeError(f"{realm_uri} serves neither 'public_key' nor a discovery document with 'jwks_uri'")
    return jwt.PyJWKClient(jwks_uri, cache_keys=True)


def _key_for(token: str):
    from monailabel.config import settings
    from monailabel.endpoints.user.auth import get_public_key

    realm = settings.MONAI_LABEL_AUTH_REALM_URI
    try:
        return get_public_key(realm)  # Keycloak: GET <realm> -> {"public_key": ...}, cached by MONAI Label
    except KeyError:
        return _jwks_client(realm).get_signing_key_from_jwt(token).key


def _claim(payload: dict, path: str):
    value = payload
    for part in path.split("#"):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def from_token(token: str):
    """MONAI Label's ``from_token`` with the signature algorithms given; raises ``jwt.InvalidTokenError``."""
    import jwt
    import requests

    from lib.errors import Unavailable, http_exception
    from monailabel.config import settings
    from monailabel.endpoints.user.auth import DEFAULT_USER, User

    if not settings.MONAI_LABEL_AUTH_ENABLE:
        return DEFAULT_USER
    try:
        key = _key_for(token)
    except jwt.PyJWKClientError as e:  # e.g. a key id the issuer does not publish: a foreign token
        raise jwt.InvalidTokenError(str(e)) from None
    except (requests.RequestException, RuntimeError, ValueError) as e:
        logger.error(f"RefSAM3D: identity provider unreachable: {e}")
        raise http_exception(Unavailable(f"the identity provider ({settings.MONAI_LABEL_AUTH_REALM_URI}) cannot be "
                                         "reached; try again later")) from None
    options = {"verify_signature": True, "verify_aud": False, "verify_exp": True, "require": ["exp"]}
    payload = jwt.decode(token, key, algorithms=ALGORITHMS, options=options)
    roles = _claim(payload, settings.MONAI_LABEL_AUTH_TOKEN_ROLES) or []
    return User(username=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_USERNAME) or payload.get("sub") or "",
                email=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_EMAIL), name=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_NAME),
                roles=list(roles) if isinstance(roles, (list, tuple)) else [])


class ReloadGuard:
    """ASGI wrapper: ``POST /reload`` needs a valid token with the admin role when auth is enabled."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        from monailabel.config import settings

        if scope["type"] == "http" and scope["path"].rstrip("/") == "/reload" and settings.MONAI_LABEL_AUTH_ENABLE:
            from fastapi import HTTPException
            from starlette.requests import Request
            from starlette.responses import JSONResponse

            from lib.server.roles import app_role
            from monailabel.endpoints.user.auth import RBAC, get_current_user, oauth2_scheme

            try:
                token = await oauth2_scheme(Request(scope))
                await RBAC(app_role("POST", "/reload"))(await get_current_user(token))
            except HTTPException as e:
                response = JSONResponse({"detail": e.detail}, status_code=e.status_code, headers=e.headers)
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


def _install_login_errors(fastapi_app) -> None:
    """``POST /auth/token`` with a wrong password: MONAI Label lets the issuer's 401 become a 500; answer 401."""
    import requests

    from lib.errors import BadGateway, Unauthorized, json_response
    from lib.infers.errors import register_exception_handlers

    async def on_issuer_error(request, exc: requests.HTTPError):
        status = exc.response.status_code if exc.response is not None else None  # the issuer's answer
        if request.url.path.rstrip("/") == "/auth/token" and status in (400, 401):
            return json_response(Unauthorized("login refused by the identity provider: wrong user name or password",
                                              headers={"WWW-Authenticate": "Bearer"}))
        return json_response(BadGateway(f"the identity provider answered {status}"))

    register_exception_handlers(fastapi_app, {requests.HTTPError: on_issuer_error})


def install_auth() -> bool:
    """Replace MONAI Label's token check and guard ``/reload`` in the running server."""
    from lib.server.install import running_fastapi_app
    from monailabel.config import settings
    from monailabel.endpoints.user import auth

    auth.from_token = from_token  # get_current_user looks it up at call time
    fastapi_app = running_fastapi_app()
    if fastapi_app is None:
        return False
    _install_login_errors(fastapi_app)
    stack = getattr(fastapi_app, "middleware_stack", None)
    if stack is not None and not isinstance(stack, ReloadGuard):
        fastapi_app.middleware_stack = ReloadGuard(stack)
    if settings.MONAI_LABEL_AUTH_ENABLE:
        logger.info(f"RefSAM3D: authentication on; realm {settings.MONAI_LABEL_AUTH_REALM_URI}, client id "
                    f"{settings.MONAI_LABEL_AUTH_CLIENT_ID}")
    return True
