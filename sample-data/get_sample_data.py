#!/usr/bin/env python3
"""Bring sample studies for the RefSAM3D Label server into ``sample-data/studies`` (git-ignored).

Online (default): download the public Medical Segmentation Decathlon Task09 spleen CT set (1.5 GB tar, CC BY-SA 4.0,
the set MONAI Label's own tutorials use), check its MD5, and copy ``--cases`` CT volumes into the studies folder.

Offline (no internet, or ``--offline``): copy real studies from ``../shared/data`` next to the repository -- the
TotalSegmentator example abdominal CT (NIfTI), its 20-slice CT DICOM series (use ``image=ct_dicom``) and the TCIA
brain MRI DICOM series -- and say so.  Nothing is ever committed: ``sample-data/*`` is git-ignored except the scripts.

With ``--hippocampus``: MSD Task04 hippocampus MRIs for the trained demo checkpoint
(``checkpoints/msd_hippocampus``): the held-out test cases of ``benchmarks/results/hippocampus_split.json``
(never trained on), from ``../shared/data/msd-hippocampus`` or else downloaded (MSD Task04, 27 MB).

    python sample-data/get_sample_data.py            # online, falls back to offline data
    python sample-data/get_sample_data.py --offline  # only the local data
    python sample-data/get_sample_data.py --hippocampus --dest sample-data/hippocampus-studies
"""

from __future__ import annotations

import argparse
import shutil
import sys
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = (REPO.parent / "shared" / "data").resolve()
MSD_SPLEEN_URL = "https://msd-for-monai.s3-us-west-2.amazonaws.com/Task09_Spleen.tar"
MSD_SPLEEN_MD5 = "410d4a301da4e5b2f6f86ec3ddba524e"
MSD_HIPPOCAMPUS_URL = "https://msd-for-monai.s3-us-west-2.amazonaws.com/Task04_Hippocampus.tar"
MSD_HIPPOCAMPUS_MD5 = "9d24dba78a72977dbd1d2e110310f31b"
HIPPOCAMPUS_SPLIT = REPO / "benchmarks" / "results" / "hippocampus_split.json"


def online(dest: Path, cases: int, downloads: Path) -> list[Path]:
    from monai.apps import download_and_extract

    task = downloads / "Task09_Spleen"
    if not (task / "imagesTr").is_dir():
        downloads.mkdir(parents=True, exist_ok=True)
        print(f"Downloading MSD Task09 spleen ({MSD_SPLEEN_URL}, 1.5 GB) into {downloads} ...", flush=True)
        download_and_extract(MSD_SPLEEN_URL, str(downloads / "Task09_Spleen.tar"), str(downloads), MSD_SPLEEN_MD5)
    images = sorted(p for p in (task / "imagesTr").glob("spleen_*.nii.gz") if not p.name.startswith("."))[:cases]
    if not images:
        raise RuntimeError(f"no images found in {task / 'imagesTr'}")
    out = []
    for p in images:
        target = dest / p.name
        if not target.exists():
            shutil.copy(p, target)
        out.append(target)
    return out


def offline(dest: Path) -> list[Path]:
    if not SHARED.is_dir():
        raise RuntimeError(f"no internet and no local data folder {SHARED}: nothing to serve")
    copies = [
        (SHARED / "totalsegmentator-example" / "example_ct.nii.gz", dest / "example_ct.nii.gz"),
        (SHARED / "totalsegmentator-example" / "example_ct_sm.nii.gz", dest / "example_ct_sm.nii.gz"),
        (SHARED / "totalsegmentator-example" / "ct_dicom", dest / "ct_dicom"),
        (SHARED / "tcia-brain-mri-dicom" / "12-T1post-05670", dest / "brain_mri_dicom"),
    ]
    out = []
    for src, target in copies:
        if not src.exists() or target.exists():
            out += [target] if target.exists() else []
            continue
        if src.is_dir():
            shutil.copytree(src, target)
        else:
            shutil.copy(src, target)
        for p in [target, *target.rglob("*")] if target.is_dir() else [target]:
            p.chmod(0o755 if p.is_dir() else 0o644)  # the shared data is read-only; the datastore writes beside it
        out.append(target)
    return out


def hippocampus(dest: Path, cases: int, offline_only: bool, downloads: Path) -> list[Path]:
    """Copy the first ``cases`` held-out test cases of the benchmark split (images only) into ``dest``."""
    import json

    ids = json.loads(HIPPOCAMPUS_SPLIT.read_text())["test"][:cases]
    source = SHARED / "msd-hippocampus" / "imagesTr"
    if not source.is_dir():
        if offline_only:
            raise RuntimeError(f"{source} does not exist and --offline forbids the download")
        from monai.apps import download_and_extract

        source = downloads / "Task04_Hippocampus" / "imagesTr"
        if not source.is_dir():
            downloads.mkdir(parents=True, exist_ok=True)
            print(f"Downloading MSD Task04 hippocampus ({MSD_HIPPOCAMPUS_URL}, 27 MB) into {downloads} ...", flush=True)
            download_and_extract(MSD_HIPPOCAMPUS_URL, str(downloads / "Task04_Hippocampus.tar"), str(downloads),
                                 MSD_HIPPOCAMPUS_MD5)
    out = []
    for case in ids:
        target = dest / f"{case}.nii.gz"
        if not target.exists():
            shutil.copy(source / f"{case}.nii.gz", target)
            target.chmod(0o644)
        out.append(target)
    return out


def reachable(url: str, timeout: float = 10.0) -> bool:
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
        return True
    except Exception:  # noqa: BLE001
        return False


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", default=str(HERE / "studies"), help="studies folder (default sample-data/studies)")
    parser.add_argument("--cases", type=int, default=3, help="number of MSD spleen CT volumes (online)")
    parser.add_argument("--offline", action="store_true", help="do not try the internet")
    parser.add_argument("--hippocampus", action="store_true",
                        help="held-out MSD hippocampus MRIs for the demo checkpoint (--cases of them)")
    args = parser.parse_args(argv)
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)

    if args.hippocampus:
        try:
            files = hippocampus(dest, args.cases, args.offline, HERE / ".downloads")
        except Exception as e:  # noqa: BLE001
            print(f"ERROR: no hippocampus studies: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        print(f"Hippocampus studies ready in {dest}: {', '.join(p.name for p in files)} (held-out test cases of "
              "benchmarks/results/hippocampus_split.json). Prompts: 'anterior hippocampus', 'posterior hippocampus'.")
        return 0

    if not args.offline:
        if reachable(MSD_SPLEEN_URL):
            try:
                files = online(dest, args.cases, HERE / ".downloads")
                print(f"Sample studies ready in {dest}: {len(files)} MSD Task09 spleen CT volumes "
                      f"({', '.join(p.name for p in files)}). Use --conf label_set btcv (spleen is label 1).")
                return 0
            except Exception as e:  # noqa: BLE001
                print(f"Download failed ({type(e).__name__}: {e}); using the offline data instead.", file=sys.stderr)
        else:
            print(f"OFFLINE: {MSD_SPLEEN_URL} is not reachable; using the offline data instead.", file=sys.stderr)
    try:
        files = offline(dest)
    except RuntimeError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    print(f"OFFLINE sample studies ready in {dest} (copied from {SHARED}, not the MSD spleen set): "
          f"{', '.join(p.name for p in files)}. The TotalSegmentator example CT is an abdominal CT "
          "(label set btcv or totalsegmentator); DICOM series folders are served with image=<folder name>.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
