"""MONAI Label's datastore and session endpoints, served by the app, closed to path traversal (real server).

Every endpoint that takes an image id, label id, label tag, session id or uploaded file is sent a traversal corpus
(``../``, percent-encoded ``%2e%2e%2f``, absolute paths, backslashes, NUL, over-long names, hidden names); each must
answer 400/403 and the whole test folder (studies, a sibling ``outside`` folder with a sentinel file, the session
store) must be byte-for-byte unchanged afterwards.  Valid ids and tags still work through the same endpoints.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import urllib.parse
from pathlib import Path
from typing import Dict, Tuple

import nibabel as nib
import numpy as np
import pytest
import requests
from app_fixtures import HIPPOCAMPUS_CASES, hippocampus_studies
from server_process import MonaiLabelServer

CASE = HIPPOCAMPUS_CASES[0]


def _snapshot(root: Path) -> Dict[str, Tuple[int, str]]:
    """path -> (size, sha256) of every file under ``root`` except the server log (and the datastore lock)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name not in ("server.log", ".lock"):
            out[str(p.relative_to(root))] = (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
        elif p.is_dir():
            out[str(p.relative_to(root)) + "/"] = (0, "")
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory, hippocampus_dir, tiny_text_encoder):
    root = tmp_path_factory.mktemp("datastore-safety")
    studies = hippocampus_studies(root, hippocampus_dir, [CASE])
    (root / "outside").mkdir()
    (root / "outside" / "sentinel.txt").write_text("must survive")
    (root / "outside" / "meta.info").write_text("{}")
    conf = {"preset": "small", "label_set": "msd_hippocampus", "text_encoder": str(tiny_text_encoder),
            "use_pretrained_model": "false", "model_dir": str(root / "model"), "preload": "false",
            "skip_trainers": "true", "skip_strategies": "true"}
    env = {"MONAI_LABEL_SESSION_PATH": str(root / "sessions")}
    srv = MonaiLabelServer(studies, conf, root / "server.log", env=env)
    srv.start()
    srv.root, srv.studies_dir = root, studies
    yield srv
    srv.stop()


def _label_bytes(server) -> bytes:
    img = nib.load(str(server.studies_dir / f"{CASE}.nii.gz"))
    label = (np.asanyarray(img.dataobj) > np.percentile(np.asanyarray(img.dataobj), 90)).astype(np.uint8)
    path = server.root / "label.nii.gz"
    nib.save(nib.Nifti1Image(label, img.affine), str(path))
    return path.read_bytes()


def _corpus(server) -> Dict[str, str]:
    """name -> (already percent-encoded) query value."""
    q = urllib.parse.quote
    outside = str(server.root / "outside")
    return {
        "dotdot": q("../outside/x", safe=""),
        "dotdot-deep": q("../../outside/x", safe=""),
        "encoded-dotdot": "%2e%2e%2f%2e%2e%2foutside%2fx",  # decoded by the server into ../../outside/x
        "double-encoded": q("%2e%2e%2foutside%2fx", safe=""),  # arrives as the literal %2e%2e%2f...
        "absolute": q(outside + "/abs", safe=""),
        "absolute-etc": q("/etc/passwd", safe=""),
        "absolute-outside-dir": q(outside, safe=""),
        "backslash": q("..\\..\\outside\\x", safe=""),
        "nul": "ct%00x",
        "overlong": "a" * 300,
        "hidden": ".datastore_v2",
        "dot": ".",
        "dotdot-bare": "..",
    }


def _request(server, method: str, path_and_query: str, files=None, data=None) -> requests.Response:
    # the query is already encoded: requests keeps %XX sequences as they are
    return requests.request(method, f"{server.url}{path_and_query}", files=files, data=data, timeout=120)


def _raw(server, method: str, path: str) -> int:
    """Status of a request whose path is sent exactly as given (no client-side normalisation of '..')."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.request(method, path)
        return conn.getresponse().status
    finally:
        conn.close()


def test_traversal_corpus_is_refused_on_every_endpoint_and_nothing_changes(server):
    label = _label_bytes(server)
    image = (server.studies_dir / f"{CASE}.nii.gz").read_bytes()
    # a valid label first, so that id/tag lookups have something to find next to the bad names
    r = _request(server, "PUT", f"/datastore/label?image={CASE}&tag=final", files={"label": ("l.nii.gz", label)})
    assert r.status_code == 200, r.text
    before = _snapshot(server.root)

    failures = []
    for kind, bad in _corpus(server).items():
        checks = [
            ("PUT", f"/datastore/image?image={bad}", {"file": ("x.nii.gz", image)}),
            ("PUT", f"/datastore/?image={bad}", {"file": ("x.nii.gz", image)}),
            ("PUT", f"/datastore/label?image={bad}", {"label": ("l.nii.gz", label)}),
            ("PUT", f"/datastore/label?image={CASE}&tag={bad}", {"label": ("l.nii.gz", label)}),
            ("DELETE", f"/datastore/image?id={bad}", None),
            ("DELETE", f"/datastore/?id={bad}", None),
            ("DELETE", f"/datastore/label?id={bad}&tag=final", None),
            ("DELETE", f"/datastore/label?id={CASE}&tag={bad}", None),
            ("GET", f"/datastore/image?image={bad}", None),
            ("HEAD", f"/datastore/image?image={bad}", None),
            ("GET", f"/datastore/image/info?image={bad}", None),
            ("PUT", f"/datastore/image/info?image={bad}", None),
            ("GET", f"/datastore/label?label={bad}&tag=final", None),
            ("GET", f"/datastore/label?label={CASE}&tag={bad}", None),
            ("HEAD", f"/datastore/label?image={bad}&tag=final", None),
            ("HEAD", f"/datastore/label?image={CASE}&tag={bad}", None),
            ("GET", f"/datastore/label/info?label={bad}&tag=final", None),
            ("GET", f"/datastore/label/info?label={CASE}&tag={bad}", None),
            ("PUT", f"/datastore/label/info?label={bad}&tag=final", None),
            ("PUT", f"/datastore/label/info?label={CASE}&tag={bad}", None),
            ("PUT", f"/datastore/updatelabelinfo?label={CASE}&tag={bad}", None),
            ("POST", f"/infer/refsam3d?image={bad}", None),
            ("POST", f"/infer/refsam3d?session_id={bad}", None),
        ]
        for method, url, files in checks:
            data = {"info": json.dumps({"x": 1}), "params": "{}"} if method in ("PUT", "POST") else None
            r = _request(server, method, url, files=files, data=data)
            if r.status_code not in (400, 403):
                failures.append(f"{kind}: {method} {url[:90]} -> {r.status_code} {r.text[:150]}")
            elif method != "HEAD" and "invalid" not in r.text and "outside the studies folder" not in r.text:
                failures.append(f"{kind}: {method} {url[:90]} -> unclear message {r.text[:150]}")
        if "%2f" not in bad.lower() and "/" not in bad:  # a session id is a path segment: only '/'-free names reach it
            for method in ("GET", "DELETE"):
                status = _raw(server, method, f"/session/{bad}")
                if status != 400:
                    failures.append(f"{kind}: {method} /session/{bad[:60]} -> {status}")

    # uploaded file names: the name itself is the attack (no image id given); clients send paths, the last part counts
    for name in ("..", "../..", "x/..", "..\\..", "w\x00.nii.gz", "a" * 300 + ".nii.gz", ".hidden.nii.gz",
                 "../../outside/.hidden.nii.gz", "C:\\tmp\\w\x00.nii.gz"):
        for method, url, field in (("PUT", "/datastore/image", "file"), ("PUT", "/session/", "files"),
                                   ("PUT", f"/datastore/label?image={CASE}", "label"),
                                   ("POST", "/infer/refsam3d", "file")):
            r = _request(server, method, url, files={field: (name, image)}, data={"params": "{}"})
            if r.status_code != 400 or "uploaded file name" not in r.text:
                failures.append(f"file name {name[:40]!r}: {method} {url} -> {r.status_code} {r.text[:150]}")

    assert not failures, "\n".join(failures) + f"\nlog:\n{server.log()[-3000:]}"
    after = _snapshot(server.root)
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k) and not k.startswith("label.nii")}
    assert not changed, f"files created/changed/removed by refused requests: {sorted(changed)}"
    assert (server.root / "outside" / "sentinel.txt").read_text() == "must survive"
    assert requests.get(f"{server.url}/info/", timeout=30).status_code == 200  # still serving


def test_uploaded_paths_only_ever_use_their_last_part(server):
    """A file name with directories (as Slicer sends its temp files) is saved under its base name, inside."""
    image = (server.studies_dir / f"{CASE}.nii.gz").read_bytes()
    before = {k: v for k, v in _snapshot(server.root).items() if not k.startswith(("studies/", "label.nii"))}
    for i, name in enumerate(("../../outside/w{}.nii.gz", "/tmp/w{}.nii.gz", "..\\..\\outside\\w{}.nii.gz")):
        r = _request(server, "PUT", "/datastore/image", files={"file": (name.format(i), image)})
        assert r.status_code in (200, 400), r.text
        if r.status_code == 200:
            assert r.json()["image"] == f"w{i}" and (server.studies_dir / f"w{i}.nii.gz").read_bytes() == image
            assert requests.delete(f"{server.url}/datastore/image", params={"id": f"w{i}"}, timeout=60).status_code == 200
            listed = requests.get(f"{server.url}/datastore/", params={"output": "all"}, timeout=60).json()["objects"]
            assert f"w{i}" not in listed
        else:  # on Linux a backslash is part of the base name: refused as an image id
            assert "invalid image id" in r.text
    after = {k: v for k, v in _snapshot(server.root).items() if not k.startswith(("studies/", "label.nii"))}
    assert after == before  # nothing written, changed or removed outside the studies folder
    assert not Path("/tmp/w1.nii.gz").exists()


def test_valid_ids_tags_and_sessions_still_work(server):
    label = _label_bytes(server)
    image = (server.studies_dir / f"{CASE}.nii.gz").read_bytes()
    url = server.url
    r = requests.put(f"{url}/datastore/image?image=new-case_1.v2", files={"file": ("x.nii.gz", image)}, timeout=60)
    assert r.status_code == 200 and r.json()["image"] == "new-case_1.v2", r.text
    assert (server.studies_dir / "new-case_1.v2.nii.gz").read_bytes() == image
    r = requests.put(f"{url}/datastore/image", files={"file": ("uploaded_by_name.nii.gz", image)}, timeout=60)
    assert r.status_code == 200 and r.json()["image"] == "uploaded_by_name", r.text

    for tag in ("final", "reviewer_2"):
        r = requests.put(f"{url}/datastore/label?image=new-case_1.v2&tag={tag}", files={"label": ("l.nii.gz", label)},
                         timeout=60)
        assert r.status_code == 200, r.text
        got = requests.get(f"{url}/datastore/label", params={"label": "new-case_1.v2", "tag": tag}, timeout=60)
        assert got.status_code == 200 and got.content == label
    assert (server.studies_dir / "labels" / "reviewer_2" / "new-case_1.v2.nii.gz").read_bytes() == label
    info = requests.get(f"{url}/datastore/label/info", params={"label": "new-case_1.v2", "tag": "reviewer_2"}, timeout=60)
    assert info.status_code == 200 and info.json()["name"] == "new-case_1.v2.nii.gz"
    r = requests.put(f"{url}/datastore/image/info", params={"image": "new-case_1.v2"}, data={"info": '{"note": "ok"}'},
                     timeout=60)
    assert r.status_code == 200, r.text
    assert requests.get(f"{url}/datastore/image/info", params={"image": "new-case_1.v2"}, timeout=60).json()["note"] == "ok"
    # an unknown but well-formed id is a plain 404, not 400 or 500
    assert requests.delete(f"{url}/datastore/image", params={"id": "no_such_case"}, timeout=60).status_code == 404

    assert requests.delete(f"{url}/datastore/label", params={"id": "new-case_1.v2", "tag": "reviewer_2"},
                           timeout=60).status_code == 200
    assert not (server.studies_dir / "labels" / "reviewer_2" / "new-case_1.v2.nii.gz").exists()
    for image_id in ("new-case_1.v2", "uploaded_by_name"):
        assert requests.delete(f"{url}/datastore/image", params={"id": image_id}, timeout=60).status_code == 200
        assert not (server.studies_dir / f"{image_id}.nii.gz").exists()
    # gone from the index when the DELETE answers (MONAI Label left that to its file watcher, asynchronously)
    ids = requests.get(f"{url}/datastore/", params={"output": "all"}, timeout=60).json()["objects"]
    assert set(ids) == {CASE}, f"removed images still listed: {sorted(ids)}"
    index = json.loads((server.studies_dir / "datastore_v2.json").read_text())
    assert set(index["objects"]) == {CASE}

    r = requests.put(f"{url}/session/", files={"files": (f"{CASE}.nii.gz", image)}, timeout=60)
    assert r.status_code == 200, r.text
    session_id = r.json()["session_id"]
    assert (server.root / "sessions" / session_id).is_dir()
    assert requests.get(f"{url}/session/{session_id}", timeout=60).status_code == 200
    assert requests.delete(f"{url}/session/{session_id}", timeout=60).status_code == 200
    assert not (server.root / "sessions" / session_id).exists()
