#!/usr/bin/env python3
"""Build the StreamSpace container images: control plane and agent.

    python3 deploy/docker/build.py [--tag TAG] [--base-image IMAGE] [--only control-plane]

Run from anywhere; the build context is the repository root. Before `docker build` it
stages what the images install, under deploy/.build/ (ignored by git, inside the context):

- wheels/: a wheelhouse for CPython 3.11 on manylinux x86_64 from requirements.txt
  (`pip download --only-binary=:all:`, and `pip wheel` for the few packages published as
  source only, such as txpostgres). The images install it with `--no-index`, so a build
  needs no PyPI access and installs exactly the pinned versions. Rebuilt when
  requirements.txt changes.
- novnc/: the pinned noVNC that `npm ci` installed in htdocs/node_modules.

`docker build` runs with `--network host` (apt inside the build reaches Debian's mirror
from the host's network; it also works on engines without a default bridge). Set
DOCKER_HOST to use another engine. The images are tagged `streamspace/control-plane:TAG`
and `streamspace/agent:TAG` (override the names with --registry, e.g. ghcr.io/acme).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STAGE = REPO / "deploy" / ".build"
DOCKERFILES = {"control-plane": REPO / "deploy/docker/Dockerfile.control-plane",
               "agent": REPO / "deploy/docker/Dockerfile.agent"}
NOVNC = REPO / "htdocs" / "node_modules" / "@novnc" / "novnc"
PYTHON_VERSION = "3.11"  # Debian bookworm's python3, the images' interpreter
# Bookworm has glibc 2.36: any manylinux wheel up to 2.36 runs there.
PLATFORMS = ["manylinux2014_x86_64", *(f"manylinux_2_{n}_x86_64" for n in range(17, 37))]
MISSING = re.compile(r"No matching distribution found for ([A-Za-z0-9_.\-]+==[^\s;]+)")


def log(message: str) -> None:
    print(f"build: {message}", file=sys.stderr, flush=True)


def _pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                          capture_output=True, text=True)


def wheelhouse(requirements: Path = REPO / "requirements.txt", dest: Path = STAGE / "wheels"
               ) -> Path:
    """Wheels for every pinned requirement and its dependencies, for the images' Python."""
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    stamp = dest / ".requirements.sha256"
    if stamp.exists() and stamp.read_text().strip() == digest:
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    target = ["--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation",
              "cp", "--abi", "cp" + PYTHON_VERSION.replace(".", "")]
    for platform in PLATFORMS:
        target += ["--platform", platform]
    built: set[str] = set()
    while True:
        log(f"downloading wheels for Python {PYTHON_VERSION} into {dest.relative_to(REPO)}")
        result = _pip("download", "-q", "-d", str(dest), "--find-links", str(dest), *target,
                      "-r", str(requirements))
        if result.returncode == 0:
            break
        missing = MISSING.search(result.stderr)
        if missing is None or missing.group(1) in built:
            raise SystemExit(f"build: pip download failed:\n{result.stderr[-3000:]}")
        # Published as a source distribution only: build its wheel here (pure Python ones
        # are portable; a compiled one would need the images' platform).
        requirement = missing.group(1)
        log(f"building a wheel for {requirement} (no wheel on the index)")
        wheel = _pip("wheel", "-q", "--no-deps", "-w", str(dest), requirement)
        if wheel.returncode != 0:
            raise SystemExit(f"build: pip wheel {requirement} failed:\n{wheel.stderr[-3000:]}")
        built.add(requirement)
    stamp.write_text(digest + "\n")
    return dest


def stage_novnc(dest: Path = STAGE / "novnc") -> Path:
    if not (NOVNC / "core" / "rfb.js").exists():
        raise SystemExit("build: noVNC is not installed; run `make setup` (npm ci in htdocs/)")
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(NOVNC, dest, ignore=shutil.ignore_patterns("docs", "*.md"))
    return dest


def build(image: str, ref: str, base_image: str | None, extra: list[str]) -> None:
    argv = ["docker", "build", "--network", "host", "-f", str(DOCKERFILES[image]), "-t", ref]
    if base_image:
        argv += ["--build-arg", f"BASE_IMAGE={base_image}"]
    argv += [*extra, str(REPO)]
    log(f"docker build {image} -> {ref}")
    # The classic builder takes the context through the API; BuildKit needs buildx, which
    # Debian's docker.io lacks. Both read the same Dockerfiles.
    env = {**os.environ}
    env.setdefault("DOCKER_BUILDKIT", "0")
    subprocess.run(argv, check=True, env=env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tag", default="latest", help="image tag (default: latest)")
    parser.add_argument("--registry", default="streamspace",
                        help="image name prefix (default: streamspace)")
    parser.add_argument("--base-image", default=None,
                        help="FROM image (default: the Dockerfiles' debian:bookworm-slim)")
    parser.add_argument("--only", choices=sorted(DOCKERFILES), action="append",
                        help="build only this image (repeatable)")
    parser.add_argument("--stage-only", action="store_true",
                        help="prepare deploy/.build/ and stop (for a build elsewhere)")
    parser.add_argument("docker_args", nargs="*", help="extra `docker build` arguments")
    args = parser.parse_args(argv)
    wheelhouse()
    stage_novnc()
    if args.stage_only:
        return 0
    for image in args.only or ["control-plane", "agent"]:
        build(image, f"{args.registry}/{image}:{args.tag}", args.base_image, args.docker_args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
