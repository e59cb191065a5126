"""MONAI Label's authentication with this app, against a real OpenID Connect issuer on loopback (real server).

``tests/oidc_issuer.py`` is a Keycloak-shaped issuer signing RS256 tokens with its own key; the server verifies them
itself (``MONAI_LABEL_AUTH_ENABLE=true``, ``MONAI_LABEL_AUTH_REALM_URI`` -> the issuer): nothing is mocked.
Endpoint groups: annotate (infer, save label, next sample), train, admin (delete, model download/upload, reload).
"""

from __future__ import annotations

import shutil

import pytest
import requests
from app_fixtures import HIPPOCAMPUS_CASES
from oidc_issuer import OIDCIssuer, new_key
from server_process import REPO_ROOT, MonaiLabelServer

CASE = HIPPOCAMPUS_CASES[0]
USER, ANNOTATOR, ADMIN = "monailabel-user", "monailabel-annotator", "monailabel-admin"
ACCOUNTS = {"viewer": ("viewer-pw", [USER]), "annotator": ("annotator-pw", [USER, ANNOTATOR]),
            "admin": ("admin-pw", [USER, ANNOTATOR, ADMIN])}


@pytest.fixture(scope="module")
def issuer():
    with OIDCIssuer(users=ACCOUNTS) as iss:
        yield iss


@pytest.fixture(scope="module")
def server(tmp_path_factory, hippocampus_dir, tiny_text_encoder, issuer):
    root = tmp_path_factory.mktemp("auth")
    studies = root / "studies"
    studies.mkdir()
    for case in HIPPOCAMPUS_CASES[:2]:
        shutil.copy(hippocampus_dir / "imagesTr" / f"{case}.nii.gz", studies / f"{case}.nii.gz")
    conf = {"preset": "small", "label_set": "msd_hippocampus", "text_encoder": str(tiny_text_encoder),
            "use_pretrained_model": "false", "model_dir": str(root / "model"), "preload": "false",
            "train_max_epochs": "1"}
    env = {"MONAI_LABEL_AUTH_ENABLE": "true", "MONAI_LABEL_AUTH_REALM_URI": issuer.realm_uri,
           "MONAI_LABEL_AUTH_CLIENT_ID": issuer.client_id}
    probe = {"Authorization": f"Bearer {issuer.token('probe', [USER], expires_in=3600)}"}
    srv = MonaiLabelServer(studies, conf, root / "server.log", env=env, probe_headers=probe)
    srv.start()
    srv.root, srv.studies_dir = root, studies
    yield srv
    srv.stop()


def _call(server, method: str, path: str, token: str | None, **kwargs) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.request(method, f"{server.url}{path}", headers=headers, timeout=300, **kwargs)


def _label_file(server):
    return {"label": ("label.nii.gz", (server.studies_dir / f"{CASE}.nii.gz").read_bytes())}


def _groups(server):
    """group -> [(method, path, kwargs)] of the endpoints the issue names."""
    image = (server.studies_dir / f"{CASE}.nii.gz").read_bytes()
    return {
        "annotate": [("POST", f"/infer/refsam3d?image={CASE}&output=json", {"data": {"params": "{}"}}),
                     ("PUT", f"/datastore/label?image={CASE}&tag=final", {"files": _label_file(server)}),
                     ("POST", "/activelearning/random", {"json": {}})],
        "train": [("POST", "/train/refsam3d", {"json": {}}), ("DELETE", "/train/", {})],
        "admin": [("DELETE", f"/datastore/image?id={CASE}", {}), ("DELETE", f"/datastore/label?id={CASE}&tag=final", {}),
                  ("GET", "/model/refsam3d", {}), ("PUT", "/model/refsam3d", {"files": {"file": ("m.pt", image)}}),
                  ("POST", "/reload", {}), ("POST", "/model/refsam3d/versions/none/restore", {})],
    }


def test_no_expired_or_foreign_token_is_401_everywhere(server, issuer):
    foreign = issuer.token("mallory", [USER, ANNOTATOR, ADMIN], key=new_key())
    foreign_kid = issuer.token("mallory", [USER, ANNOTATOR, ADMIN], key=new_key(), kid="other-key")
    expired = issuer.token("admin", [USER, ANNOTATOR, ADMIN], expires_in=-60)
    unsigned = issuer.token("admin", [USER, ANNOTATOR, ADMIN]).rsplit(".", 1)[0] + "."
    reads = [("GET", "/info/", {}), ("GET", "/datastore/", {}), ("GET", "/model/refsam3d/versions", {}),
             ("GET", "/annotate/api/studies", {})]
    endpoints = reads + [e for g in _groups(server).values() for e in g]
    for name, token in (("none", None), ("foreign", foreign), ("foreign-kid", foreign_kid), ("expired", expired),
                        ("unsigned", unsigned), ("garbage", "not-a-jwt")):
        for method, path, kwargs in endpoints:
            r = _call(server, method, path, token, **kwargs)
            assert r.status_code == 401, f"{name} token: {method} {path} -> {r.status_code} {r.text[:200]}"
            assert r.headers.get("www-authenticate", "").lower().startswith("bearer")
    assert (server.studies_dir / f"{CASE}.nii.gz").exists()  # nothing was deleted


def test_valid_token_of_the_wrong_role_is_403_on_each_group(server, issuer):
    viewer = issuer.token("viewer", [USER])
    annotator = issuer.token("annotator", [USER, ANNOTATOR])
    nobody = issuer.token("nobody", ["offline_access"])
    groups = _groups(server)
    for group, token in (("annotate", viewer), ("train", annotator), ("admin", annotator)):
        for method, path, kwargs in groups[group]:
            r = _call(server, method, path, token, **kwargs)
            assert r.status_code == 403, f"{group}: {method} {path} -> {r.status_code} {r.text[:200]}"
            assert "is required" in r.json()["detail"]
    assert _call(server, "GET", "/info/", nobody).status_code == 403  # a valid token without any MONAI Label role
    assert (server.studies_dir / f"{CASE}.nii.gz").exists()
    assert not (server.studies_dir / "labels" / "final" / f"{CASE}.nii.gz").exists()  # no label saved by a viewer


def test_valid_tokens_of_the_right_role_are_served(server, issuer):
    viewer = issuer.token("viewer", [USER])
    annotator = issuer.token("annotator", [USER, ANNOTATOR])
    admin = issuer.token("admin", [USER, ANNOTATOR, ADMIN])
    info = _call(server, "GET", "/info/", viewer)
    assert info.status_code == 200 and "refsam3d" in info.json()["models"]
    assert _call(server, "GET", "/datastore/", viewer).status_code == 200
    assert _call(server, "GET", "/model/refsam3d/versions", viewer).status_code == 200
    assert _call(server, "GET", "/annotate/api/studies", viewer).status_code == 200

    groups = _groups(server)
    for method, path, kwargs in groups["annotate"]:
        r = _call(server, method, path, annotator, **kwargs)
        assert r.status_code == 200, f"annotate: {method} {path} -> {r.status_code} {r.text[:300]}"
    assert (server.studies_dir / "labels" / "final" / f"{CASE}.nii.gz").exists()

    r = _call(server, "POST", "/train/refsam3d", admin, json={})
    assert r.status_code == 200, r.text
    assert _call(server, "DELETE", "/train/", admin).status_code == 200

    # model download: the published weights, for an admin (here a copy of the shipped checkpoint, removed again)
    published = server.root / "model" / "refsam3d_small.pt"
    shipped = (REPO_ROOT / "checkpoints" / "msd_hippocampus" / "refsam3d_small.pt").read_bytes()
    published.write_bytes(shipped)
    try:
        model = _call(server, "GET", "/model/refsam3d", admin)
        assert model.status_code == 200 and model.content == shipped, model.text[:300]
        assert _call(server, "GET", "/model/refsam3d", annotator).status_code == 403
    finally:
        published.unlink()
    other = HIPPOCAMPUS_CASES[1]
    assert _call(server, "DELETE", f"/datastore/label?id={CASE}&tag=final", admin).status_code == 200
    assert _call(server, "DELETE", f"/datastore/image?id={other}", admin).status_code == 200
    assert not (server.studies_dir / f"{other}.nii.gz").exists()


def test_slicer_login_flow_with_monai_labels_client(server, issuer):
    """3D Slicer's MONAI Label module logs in with this client class (the copy it bundles is the same code)."""
    from monailabel.client import MONAILabelClient
    from monailabel.client.client import MONAILabelClientException

    client = MONAILabelClient(server.url)
    assert client.auth_enabled() is True
    with pytest.raises(MONAILabelClientException):
        client.info()  # no token yet
    token = client.auth_token("annotator", "annotator-pw")  # password grant through the server's /auth/token
    client.update_auth(token)
    assert client.auth_valid_token() is True
    assert "refsam3d" in client.info()["models"]
    with pytest.raises(MONAILabelClientException):
        client.auth_token("annotator", "wrong-password")
    refused = requests.post(f"{server.url}/auth/token", data={"username": "annotator", "password": "x"}, timeout=60)
    assert refused.status_code == 401 and "wrong user name or password" in refused.json()["detail"]
    assert ("POST", f"/realms/{issuer.realm}/protocol/openid-connect/token") in issuer.requests


def test_plain_oidc_issuer_keys_come_from_its_jwks(tmp_path, hippocampus_dir, tiny_text_encoder):
    """An issuer whose realm document has no Keycloak ``public_key``: the server takes the key from ``jwks_uri``."""
    with OIDCIssuer(keycloak=False) as plain:
        studies = tmp_path / "studies"
        studies.mkdir()
        shutil.copy(hippocampus_dir / "imagesTr" / f"{CASE}.nii.gz", studies / f"{CASE}.nii.gz")
        conf = {"preset": "small", "label_set": "msd_hippocampus", "text_encoder": str(tiny_text_encoder),
                "use_pretrained_model": "false", "model_dir": str(tmp_path / "model"), "preload": "false",
                "skip_trainers": "true"}
        env = {"MONAI_LABEL_AUTH_ENABLE": "true", "MONAI_LABEL_AUTH_REALM_URI": plain.realm_uri}
        probe = {"Authorization": f"Bearer {plain.token('probe', [USER], expires_in=3600)}"}
        with MonaiLabelServer(studies, conf, tmp_path / "server.log", env=env, probe_headers=probe) as srv:
            assert _call(srv, "GET", "/info/", plain.token("viewer", [USER])).status_code == 200
            assert _call(srv, "GET", "/info/", plain.token("mallory", [USER], key=new_key())).status_code == 401
        assert ("GET", f"/realms/{plain.realm}/protocol/openid-connect/certs") in plain.requests
