"""The two Dockerfiles stay in step where the build cache depends on it."""

from pathlib import Path

DOCKER = Path(__file__).resolve().parents[3] / "deploy" / "docker"


def _stages(name: str) -> list[str]:
    text = (DOCKER / name).read_text()
    body = [line for line in text.splitlines() if line and not line.startswith("#")]
    return "\n".join(body).split("\nFROM python\n")


def test_both_images_share_their_python_and_venv_stages():
    """Identical first stages (base, python3, the venv from the wheelhouse) are built once
    and reused by the second image's build: the suite builds both on every run."""
    cp, agent = _stages("Dockerfile.control-plane"), _stages("Dockerfile.agent")
    assert len(cp) == len(agent) == 2
    assert cp[0] == agent[0]
    assert "pip install --no-cache-dir --no-index --find-links" in cp[0]


def test_images_run_as_a_numeric_non_root_user_under_tini():
    for name in ("Dockerfile.control-plane", "Dockerfile.agent"):
        final = _stages(name)[1]
        assert "\nUSER 10001:10001\n" in final  # numeric: runAsNonRoot can check it
        assert 'ENTRYPOINT ["tini", "--", "twistd", "--nodaemon"' in final
        assert "HEALTHCHECK" in final
