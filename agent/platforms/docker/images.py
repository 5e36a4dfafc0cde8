"""Making sure a session's image is on the engine: look, pull when the policy says so, and
turn the engine's pull stream into progress a user can read ("pulling image x: 40%").

The pull stream is one JSON object per layer event: `{"id", "status": "Downloading",
"progressDetail": {"current", "total"}}`; a failure arrives inside a 200 stream as
`{"error": ...}`. Percentages are bytes downloaded over bytes known, over all layers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from agent.platforms.base import DriverError
from agent.platforms.docker.engine import EngineClient, EngineError

PULL_POLICIES = ("missing", "always", "never")
REPORT_STEP = 10  # percent between two progress messages


def split_reference(image: str) -> tuple[str, str]:
    """`fromImage` and `tag` for /images/create: "repo[:tag]" or "repo@digest"."""
    if "@" in image:
        return image, ""
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = image.rsplit(":", 1)
        return repo, tag
    return image, "latest"


class PullProgress:
    """Aggregates a pull stream; `update` returns a message when one is worth sending."""

    def __init__(self, image: str) -> None:
        self.image = image
        self.layers: dict[str, tuple[int, int]] = {}
        self.error = ""
        self._reported = -REPORT_STEP

    def percent(self) -> int | None:
        total = sum(t for _, t in self.layers.values())
        if not total:
            return None
        return min(100, int(100 * sum(c for c, _ in self.layers.values()) / total))

    def update(self, event: Any) -> str | None:
        if not isinstance(event, dict):
            return None
        if event.get("error"):
            self.error = str(event.get("error"))[:500]
            return None
        layer, status = str(event.get("id") or ""), str(event.get("status") or "")
        detail = event.get("progressDetail") or {}
        if layer and status == "Downloading" and isinstance(detail, dict):
            try:
                self.layers[layer] = (int(detail.get("current") or 0),
                                      int(detail.get("total") or 0))
            except (TypeError, ValueError):
                return None
        elif layer and status in ("Download complete", "Pull complete", "Already exists"):
            current, total = self.layers.get(layer, (0, 0))
            if total:
                self.layers[layer] = (total, total)
        else:
            return None
        done = self.percent()
        if done is None or done < self._reported + REPORT_STEP:
            return None
        self._reported = done - done % REPORT_STEP
        return f"pulling image {self.image}: {done}%"


async def image_present(client: EngineClient, image: str) -> bool:
    try:
        await client.call("GET", f"/images/{quote(image, safe='/:@')}/json")
    except EngineError as e:
        if e.status == 404:
            return False
        raise
    return True


async def ensure_image(client: EngineClient, image: str, policy: str,
                       report: Callable[[str], None]) -> None:
    """The image is on the engine when this returns, else DriverError says why not."""
    if policy != "always" and await image_present(client, image):
        return
    if policy == "never":
        raise DriverError(f"the image {image} is not on this Docker engine, and the agent "
                          "does not pull images (DOCKER_PULL=never)")
    report(f"pulling image {image}")
    progress = PullProgress(image)

    def on_event(event: Any) -> None:
        message = progress.update(event)
        if message:
            report(message)

    repo, tag = split_reference(image)
    params = {"fromImage": repo, **({"tag": tag} if tag else {})}
    try:
        await client.stream("POST", "/images/create", on_event, params=params)
    except EngineError as e:
        raise DriverError(f"the image {image} could not be pulled: {e.message}") from e
    if progress.error:
        raise DriverError(f"the image {image} could not be pulled: {progress.error}")
    if not await image_present(client, image):
        raise DriverError(f"the image {image} could not be pulled (the engine reported no "
                          "error, but has no such image)")
    report(f"pulled image {image}")
