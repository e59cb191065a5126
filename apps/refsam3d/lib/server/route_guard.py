"""One dependency in front of every MONAI Label endpoint: the app's role (``roles.py``) and uploaded file names.

MONAI Label declares ``user: User = Depends(RBAC(role))`` on each endpoint.  Through FastAPI's public
``dependency_overrides`` the app replaces each of those ``RBAC`` instances by a guard that

1. authorises with MONAI Label's own ``RBAC`` class and token check (``get_current_user``), with the app's role
   where ``roles.app_role`` says so, else MONAI Label's;
2. checks the name of every uploaded file of the request with ``check_name`` (400 before the endpoint runs); only
   its last path component, the part MONAI Label uses (the MONAI Label client and Slicer send full paths).
"""

from __future__ import annotations

import inspect
import logging
import re
import typing
from typing import List

from fastapi import Request, Security, UploadFile
from lib.server.names import check_name
from lib.server.roles import app_role

from monailabel.endpoints.user.auth import RBAC, User, get_current_user

logger = logging.getLogger(__name__)


def _upload_params(call) -> List[str]:
    names = []
    for name, param in inspect.signature(call).parameters.items():
        ann = param.annotation
        if ann is UploadFile or UploadFile in typing.get_args(ann) or any(
                UploadFile in typing.get_args(a) for a in typing.get_args(ann)):
            names.append(name)
    return names


def _make_guard(roles, upload_names: List[str]):
    rbac = RBAC(roles)

    async def guard(request: Request, user: User = Security(get_current_user)) -> User:
        user = await rbac(user)
        if upload_names:
            form = await request.form()  # already parsed (and cached) by FastAPI for the endpoint
            for name in upload_names:
                for value in form.getlist(name):
                    filename = getattr(value, "filename", None)
                    if filename:  # clients send a path (Slicer: its temp file); MONAI Label keeps the last part
                        check_name("uploaded file name", re.split(r"[\\/]", filename)[-1])
        return user

    return guard


def _api_routes(fastapi_app):
    """(route, RBAC instance) of every endpoint of the routers MONAI Label included, and of the app itself."""
    from fastapi.routing import APIRoute

    routes = list(fastapi_app.routes)
    for route in list(routes):
        routes.extend(getattr(getattr(route, "original_router", None), "routes", []))
    for route in routes:
        if isinstance(route, APIRoute):
            for dep in route.dependant.dependencies:
                if isinstance(dep.call, RBAC):
                    yield route, dep.call


def install_route_guards(fastapi_app) -> int:
    """Override every endpoint's ``RBAC`` dependency; returns how many endpoints are guarded."""
    count = 0
    for route, rbac in _api_routes(fastapi_app):
        roles = rbac.roles
        for method in route.methods:
            roles = app_role(method, route.path) or roles
        fastapi_app.dependency_overrides[rbac] = _make_guard(roles, _upload_params(route.endpoint))
        count += 1
    logger.info(f"RefSAM3D: {count} endpoints guarded (roles, uploaded file names)")
    return count
