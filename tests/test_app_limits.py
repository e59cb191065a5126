"""Responsiveness and limits of the real server (issue 22, items 1 and 5).

* ``/info``, ``/datastore``, ``/activelearning`` and the OHIF files answer while an inference runs
  (MONAI Label alone runs ``/infer`` on the event loop, so they would wait for it);
* at most ``max_concurrent_infers`` run, ``max_queued_infers`` wait, one more gets 503 + ``Retry-After``;
  concurrent answers equal sequential ones;
* a body over ``max_upload_mb`` -> 413 before it is read whole (declared, or counted while streamed);
* a volume whose header claims more than ``max_voxels`` -> 422 (nothing allocated: the forged files below
  hold a few bytes of data for headers of billions of voxels).
"""

from __future__ import annotations

import gzip
import json
import select
import socket
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
from app_fixtures import build_studies, infer, read_volume, write_label_set
from server_process import MonaiLabelServer

MAX_UPLOAD_MB = 16
MAX_VOXELS = 5_000_000
FORGED_SHAPE = (3000, 3000, 3000)  # 2.7e10 voxels: ~100 GB as float32 if anything tried to allocate it


@pytest.fixture(scope="module")
def server(tmp_path_factory, totalseg_dir, hippocampus_dir, tiny_text_encoder):
    root = tmp_path_factory.mktemp("app-limits")
    studies = build_studies(root / "studies", totalseg_dir, hippocampus_dir)
    _forged_nifti(studies / "forged_huge.nii.gz")
    conf = {
        "preset": "small",
        "label_set": str(write_label_set(root / "test_abdomen.json")),
        "text_encoder": str(tiny_text_encoder),
        "use_pretrained_model": "false",
        "model_dir": str(root / "model"),
        "max_concurrent_infers": "2",
        "max_queued_infers": "1",
        "max_upload_mb": str(MAX_UPLOAD_MB),
        "max_voxels": str(MAX_VOXELS),
    }
    srv = MonaiLabelServer(studies, conf, root / "server.log")
    srv.start()
    srv.root, srv.studies_dir = root, studies
    yield srv
    srv.stop()


def _forged_nifti(path: Path) -> Path:
    """A .nii.gz whose header claims ``FORGED_SHAPE`` float32 voxels, followed by 1 kB of data."""
    header = nib.Nifti1Header()
    header.set_data_shape(FORGED_SHAPE)
    header.set_data_dtype(np.float32)
    header.set_qform(np.eye(4), code=1)
    raw = header.binaryblock + b"\0" * 4 + b"\0" * 1024  # 348-byte header, 4-byte extension flag, data
    path.write_bytes(gzip.compress(raw))
    return path


def _forged_nrrd(path: Path) -> Path:
    sizes = " ".join(map(str, FORGED_SHAPE))
    path.write_bytes((f"NRRD0004\ntype: float\ndimension: 3\nspace: left-posterior-superior\nsizes: {sizes}\n"
                      "space directions: (1,0,0) (0,1,0) (0,0,1)\nendian: little\nencoding: raw\n"
                      "space origin: (0,0,0)\n\n").encode() + b"\0" * 1024)
    return path


def _noisy_ct(src: Path, dest: Path, seed: int, slices: int) -> Path:
    """The first ``slices`` slices of a CT plus a little noise (+-1 HU): new content, so the server encodes it cold."""
    img = nib.load(str(src))
    data = np.asanyarray(img.dataobj).astype(np.int16)[:, :, :slices]
    data += np.random.default_rng(seed).integers(-1, 2, data.shape, dtype=np.int16)
    nib.save(nib.Nifti1Image(data, img.affine), str(dest))
    return dest


def _queue(server) -> dict:
    return requests.get(f"{server.url}/info/", timeout=30).json()["infer_queue"]


def _ok(response: requests.Response, server) -> requests.Response:
    assert response.status_code == 200, f"{response.status_code}: {response.text[:500]}\nlog:\n{server.log()[-3000:]}"
    return response


# ---------------------------------------------------------------------------------------------------- item 1
def test_other_endpoints_answer_while_an_inference_runs(server, totalseg_dir, tmp_path):
    upload = _noisy_ct(totalseg_dir / "example_ct.nii.gz", tmp_path / "busy_ct.nii.gz", seed=1, slices=112)
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("r", infer(server.url, None, {}, file=upload)))
    probes = [("GET", "/info/", None), ("GET", "/datastore/?output=all", None),
              ("POST", "/activelearning/random", {}), ("GET", "/ohif/", None)]
    during = []  # (path, status, seconds) of answers received while the inference was still running
    worker.start()
    i = 0
    while worker.is_alive():
        method, path, body = probes[i % len(probes)]
        i += 1
        start = time.perf_counter()
        r = requests.request(method, server.url + path, json=body, timeout=60)
        elapsed = time.perf_counter() - start
        if worker.is_alive():
            during.append((path, r.status_code, elapsed))
        time.sleep(0.05)
    worker.join()
    _ok(result["r"], server)
    assert result["r"].json()["cache"]["encoding"] == "miss"  # it really was a cold inference
    # on the event loop, a probe sent during the inference is answered only after it: at most one would count
    assert len(during) >= 4, f"only {len(during)} answers during the inference: {during}"
    assert {p for p, _, _ in during} >= {"/info/", "/datastore/?output=all"}, during
    assert all(status == 200 for _, status, _ in during), [d for d in during if d[1] != 200]
    worst = max(s for _, _, s in during)
    assert worst < 2.0, f"slowest answer during the inference: {worst:.2f} s ({during})"


def test_full_queue_gets_503_with_retry_after_and_concurrent_equals_sequential(server, totalseg_dir, tmp_path):
    # whole CTs (112 slices), so that each request lasts long enough for the gate to be seen full on a fast
    # machine too (30 slices took 0.64 s each on a 2-core AMX Xeon: all three were done before the first poll)
    uploads = [_noisy_ct(totalseg_dir / "example_ct.nii.gz", tmp_path / f"q{i}.nii.gz", seed=10 + i,
                         slices=112)
               for i in range(3)]
    prompts = [{"text_prompt": "liver"}, {"label_prompt": [1, 5]}, {}]
    results = {}

    def run(i):
        results[i] = infer(server.url, None, prompts[i], file=uploads[i], output="image")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
        time.sleep(0.15)  # admitted in this order
    deadline, state = time.time() + 120, {}
    while time.time() < deadline:  # two running, one waiting: the gate is full
        state = _queue(server)
        if state["running"] == 2 and state["waiting"] == 1:
            break
        assert any(t.is_alive() for t in threads), f"all finished before the queue was seen full: {state}"
        time.sleep(0.02)
    assert state["max_concurrent"] == 2 and state["max_queued"] == 1
    assert (state["running"], state["waiting"]) == (2, 1), state

    extra = infer(server.url, "hippocampus_004", {}, timeout=30)
    assert extra.status_code == 503, f"{extra.status_code}: {extra.text[:300]}"
    assert int(extra.headers["Retry-After"]) >= 1
    assert "busy" in extra.json()["detail"]
    assert requests.get(f"{server.url}/info/", timeout=10).status_code == 200

    for t in threads:
        t.join()
    concurrent = [read_volume(_ok(results[i], server).content, "x.nii.gz")[0] for i in range(3)]
    sequential = [read_volume(_ok(infer(server.url, None, prompts[i], file=uploads[i], output="image"), server)
                              .content, "x.nii.gz")[0] for i in range(3)]
    for a, b in zip(concurrent, sequential):
        np.testing.assert_array_equal(a, b)
    assert _queue(server)["rejected"] >= 1


# ---------------------------------------------------------------------------------------------------- item 5
def _read_http_response(sock: socket.socket, timeout: float = 60) -> tuple[int, dict, bytes]:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
    length = int(headers.get("content-length", 0))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize("method,target", [("POST", "/infer/refsam3d?output=json"),
                                           ("PUT", "/datastore/?image=big_upload"),
                                           ("PUT", "/datastore/label?image=example_ct_sm&tag=final")])
def test_declared_oversized_upload_gets_413_before_any_body_is_sent(server, method, target):
    declared = 100 * 2**20
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall((f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {declared}\r\n"
                      "Content-Type: multipart/form-data; boundary=xyz\r\n\r\n").encode())
        status, _, body = _read_http_response(sock)  # no byte of the body was sent
    assert status == 413, body[:300]
    assert "max_upload_mb" in json.loads(body)["detail"]
    assert not (server.studies_dir / "big_upload.nii.gz").exists()


def test_streamed_oversized_upload_gets_413_before_it_is_read_whole(server):
    boundary = "xyz"
    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.nii\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    chunk = b"\0" * 65536
    limit_without_answer = 200 * 2**20  # the "file" would be endless; stop sending here at the latest
    sent, status, body = 0, None, b""
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall((f"POST /infer/refsam3d?output=json HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
                      f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n").encode())
        try:
            for payload in [part] + [chunk] * (limit_without_answer // len(chunk)):
                if select.select([sock], [], [], 0)[0]:
                    break  # the server has answered
                sock.sendall(b"%x\r\n" % len(payload) + payload + b"\r\n")
                sent += len(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed the connection after answering
        status, _, body = _read_http_response(sock)
    assert status == 413, body[:300]
    assert "max_upload_mb" in json.loads(body)["detail"]
    assert sent < limit_without_answer, "the server read everything it was sent"
    # the server keeps serving, and an upload under the limit is accepted
    assert requests.get(f"{server.url}/info/", timeout=30).status_code == 200


def test_upload_under_the_limit_is_served(server, hippocampus_dir):
    upload = hippocampus_dir / "imagesTr" / "hippocampus_007.nii.gz"
    assert upload.stat().st_size < MAX_UPLOAD_MB * 2**20
    r = _ok(infer(server.url, None, {"text_prompt": "hippocampus", "modality": "MR"}, file=upload), server)
    assert list(r.json()["label_names"]) == ["hippocampus"]  # free text: named by the prompt


@pytest.mark.parametrize("kind", ["nifti_upload", "nrrd_upload", "datastore_id"])
def test_volume_whose_header_claims_too_many_voxels_gets_422(server, tmp_path, kind):
    if kind == "nifti_upload":
        r = infer(server.url, None, {}, file=_forged_nifti(tmp_path / "huge.nii.gz"), timeout=60)
    elif kind == "nrrd_upload":
        r = infer(server.url, None, {}, file=_forged_nrrd(tmp_path / "huge.nrrd"), timeout=60)
    else:
        r = infer(server.url, "forged_huge", {}, timeout=60)
    assert r.status_code == 422, f"{r.status_code}: {r.text[:300]}"
    detail = r.json()["detail"]
    assert "27,000,000,000 voxels" in detail and "max_voxels" in detail and f"{MAX_VOXELS:,}" in detail
    assert requests.get(f"{server.url}/info/", timeout=30).status_code == 200


def test_real_volume_over_the_voxel_limit_gets_422(server, totalseg_dir, tmp_path):
    small = nib.load(str(totalseg_dir / "example_ct_sm.nii.gz"))
    assert np.prod(small.shape) <= MAX_VOXELS
    big = tmp_path / "big_real.nii.gz"  # a real volume over the limit (all its voxels exist)
    side = int(round((MAX_VOXELS * 1.2) ** (1 / 3)))
    nib.save(nib.Nifti1Image(np.zeros((side, side, side), np.int16), small.affine), str(big))
    assert big.stat().st_size < MAX_UPLOAD_MB * 2**20  # zeros compress well: the upload limit is not what answers
    r = infer(server.url, None, {}, file=big, timeout=60)
    assert r.status_code == 422 and "max_voxels" in r.json()["detail"], f"{r.status_code}: {r.text[:300]}"
