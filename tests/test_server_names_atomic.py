"""Units of the datastore safety: the one allow-list (``check_name``) and the atomic writes (no server)."""

from __future__ import annotations

import os

import pytest

from lib.atomic_files import atomic_copy, atomic_write_text
from lib.server.names import MAX_NAME_CHARS, UnsafeNameError, check_name


@pytest.mark.parametrize("name", ["hippocampus_004", "example_ct_sm", "1.2.840.113619.2.55.3", "case 12", "a+b-c",
                                  "x" * MAX_NAME_CHARS, "final", "reviewer_2", "ebeacaf4-edd3-11f1-a7f5-02fc00000001"])
def test_safe_names_pass_unchanged(name):
    assert check_name("image id", name) == name


@pytest.mark.parametrize("name", ["", "..", ".", "../x", "a/b", "/etc/passwd", "..\\x", "a\\b", "C:\\x", "x\x00y",
                                  "x" * (MAX_NAME_CHARS + 1), ".hidden", " lead", "trail ", "a..b", "%2e%2e%2f",
                                  "caf\u00e9", "x\ny", "x;y", "~root", None, 5])
def test_unsafe_names_are_refused_with_a_reason(name):
    with pytest.raises(UnsafeNameError) as e:
        check_name("label tag", name)
    assert e.value.status_code == 400 and "invalid label tag" in e.value.message


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    dest = tmp_path / "datastore_v2.json"
    atomic_write_text(dest, '{"v": 1}')
    missing = tmp_path / "no-such-source.nii.gz"
    with pytest.raises(FileNotFoundError):
        atomic_copy(missing, dest)  # fails after the temporary file was created
    assert dest.read_text() == '{"v": 1}'
    assert sorted(os.listdir(tmp_path)) == ["datastore_v2.json"]
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3 << 20))
    atomic_copy(src, dest)
    assert dest.read_bytes() == src.read_bytes()
    assert oct(dest.stat().st_mode & 0o777) != oct(0o600)  # the mode open() would give, not mkstemp's
