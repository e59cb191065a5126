"""The one error table (lib/errors.py): every kind maps to its status, plain errors of the lower layers to a kind,
and anything else is a 500 that tells the client nothing of the internals."""

from __future__ import annotations

import json

import pytest

from lib import errors
from lib.image_errors import ImageNotFoundError, UnreadableImageError, UnusableImageError

EXPECTED = {errors.BadRequest: 400, errors.Unauthorized: 401, errors.Forbidden: 403, errors.NotFound: 404,
            errors.Conflict: 409, errors.TooLarge: 413, errors.Unprocessable: 422, errors.BadGateway: 502,
            errors.Unavailable: 503}


@pytest.mark.parametrize("kind,status", list(EXPECTED.items()))
def test_every_kind_maps_to_its_status(kind, status):
    exc = kind(f"a {kind.__name__} message", headers={"Retry-After": "3"}, nearest_labels=["liver"])
    assert errors.STATUS[kind] == status == exc.status_code == errors.status_of(exc)
    http = errors.http_exception(exc)
    assert http.status_code == status and http.detail == exc.message and http.headers == {"Retry-After": "3"}
    assert http.detail.extra == {"nearest_labels": ["liver"]}
    response = errors.json_response(exc)
    assert response.status_code == status and response.headers["retry-after"] == "3"
    assert json.loads(response.body) == {"detail": exc.message, "nearest_labels": ["liver"]}


def test_the_table_has_every_kind():
    kinds = {c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.AppError)}
    assert kinds - {errors.AppError} == set(errors.STATUS) == set(EXPECTED)


def test_plain_errors_of_the_lower_layers_map_to_kinds():
    from lib.server.names import UnsafeNameError
    from monailabel.interfaces.exception import (ImageNotFoundException, MONAILabelError, MONAILabelException)

    cases = [(ImageNotFoundError("image 'x' does not exist"), 404), (UnreadableImageError("0 bytes"), 400),
             (UnusableImageError("image is 2D"), 422), (UnsafeNameError("image id", "../x", "a path"), 400),
             (ImageNotFoundException("Image x not found"), 404),
             (MONAILabelException(MONAILabelError.INVALID_INPUT, "bad input"), 400)]
    for exc, status in cases:
        assert errors.status_of(exc) == status, exc
        assert errors.message_of(exc) == (getattr(exc, "message", None) or getattr(exc, "msg", None) or str(exc))


@pytest.mark.parametrize("exc", [RuntimeError("CUDA out of memory at /secret/path"), KeyError("weights"),
                                 FileNotFoundError("/etc/refsam3d/model.pt"), ValueError("internal")])
def test_unknown_errors_are_500_without_internals(exc):
    assert errors.kind_of(exc) is None and errors.status_of(exc) == 500
    status, body, headers = errors.answer(exc)
    assert (status, body, headers) == (500, {"detail": "Internal Server Error"}, None)
    assert "secret" not in errors.http_exception(exc).detail


def test_no_status_literals_at_the_raise_sites():
    """The app layer names kinds; status codes are written in lib/errors.py only."""
    import re
    from pathlib import Path

    app = Path(errors.__file__).resolve().parents[1]
    files = [app / "main.py", *sorted((app / "lib").rglob("*.py"))]
    offenders = []
    for path in files:
        if path.name == "errors.py" and path.parent.name == "lib":
            continue
        text = path.read_text()
        for pattern in (r"status_code\s*=\s*\d{3}", r"raise HTTPException\(", r"BadInputError", r"\"status\":\s*\d{3}"):
            offenders += [f"{path.relative_to(app)}: {m.group(0)}" for m in re.finditer(pattern, text)]
    assert offenders == []


def test_one_rule_decides_what_is_an_upload(tmp_path):
    """lib/uploads.py: MONAI Label's ``<tempdir>/tmpXXXXXXXX<ext>`` uploads; the request check, the cache key and
    the messages all ask it."""
    import tempfile

    from lib.transforms import display_name
    from lib.uploads import is_upload

    with tempfile.NamedTemporaryFile(suffix=".nii.gz") as upload:
        assert is_upload(upload.name) and display_name(upload.name) == "the uploaded file"
    study = tmp_path / "tmpabcdefgh.nii.gz"  # the same name outside the temporary folder is a study
    assert not is_upload(study) and display_name(study) == "'tmpabcdefgh.nii.gz'"
    assert not is_upload(f"{tempfile.gettempdir()}/tmp../etc.nii.gz") and not is_upload(f"{tempfile.gettempdir()}/x.nii")
