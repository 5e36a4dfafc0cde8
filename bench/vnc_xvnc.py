"""Benchmark: a real Xvnc at 2560x1440 sending raw full-frame updates, three ways, interleaved.

  RFB client --TCP--> Xvnc                                           (the ceiling)
  RFB client --WS--> websockify --TCP--> Xvnc                        (the reference)
  RFB client --WS--> control plane --WS--> agent --TCP--> Xvnc       (the product)

The client (in this process) does the RFB 3.8 handshake (security None), asks for 32-bit
pixels in raw encoding, then requests the whole screen non-incrementally, one update after
another: each answer is 2560 x 1440 x 4 bytes (about 14 MiB). Prints JSON: full frames per
second and MiB/s per path (medians of the repetitions, every sample), ratios, and the CPU
milliseconds per MiB of the control plane and agent.

Run: .venv/bin/python -m bench.vnc_xvnc [--frames 20] [--reps 5] [--short]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import struct
import time
from pathlib import Path

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint

from bench.harness import (
    Harness,
    free_port,
    median,
    process_usage,
    run_and_print,
    vnc_url,
    wait_until,
)
from bench.vnc_relay import CpuMeter
from streamspace_common.wsframes import no_delay

WIDTH, HEIGHT = 2560, 1440
FRAME_BYTES = WIDTH * HEIGHT * 4
# 32 bpp, depth 24, little endian, true colour, 8 bits per channel
PIXEL_FORMAT = struct.pack(">BBBBHHHBBBxxx", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)


class RfbCounter:
    """Just enough of an RFB client to ask for full raw frames and count them as they
    stream, without keeping pixels. `send(bytes)` is how it talks back."""

    def __init__(self, send, frames: int) -> None:
        self.send, self.frames = send, frames
        self.buf = bytearray()
        self.stage = "version"
        self.skip = 0  # pixel bytes still to pass over
        self.rects_left = 0
        self.done_frames = 0
        self.started = 0.0
        self.finished: defer.Deferred = defer.Deferred()
        self.bytes = 0

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self.skip:  # pixels: counted, never copied
                n = min(self.skip, len(view))
                self._skipped(n)
                view = view[n:]
                continue
            self.buf += view[:64]  # headers are short: never copy a whole message
            view = view[64:]
            while self._step():
                pass
            if self.skip and self.buf:  # pixels began inside the buffered bytes
                n = min(self.skip, len(self.buf))
                del self.buf[:n]
                self._skipped(n)

    def _skipped(self, n: int) -> None:
        self.skip -= n
        self.bytes += n
        if not self.skip and not self.rects_left:
            self._frame_done()

    def _take(self, n: int) -> bytes | None:
        if len(self.buf) < n:
            return None
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def _request(self) -> None:
        self.send(struct.pack(">BBHHHH", 3, 0, 0, 0, WIDTH, HEIGHT))

    def _frame_done(self) -> None:
        self.done_frames += 1
        if self.done_frames == 1:
            self.started = time.perf_counter()  # the first frame is the warm-up
            self.bytes = 0
        if self.done_frames > self.frames:
            if not self.finished.called:
                elapsed = time.perf_counter() - self.started
                self.finished.callback((self.frames / elapsed,
                                        self.bytes / elapsed / (1024 * 1024)))
            return
        self._request()

    def _step(self) -> bool:
        if self.stage == "version":
            if self._take(12) is None:
                return False
            self.send(b"RFB 003.008\n")
            self.stage = "security"
        elif self.stage == "security":
            if not self.buf or len(self.buf) < 1 + self.buf[0]:
                return False
            types = self._take(1 + self.buf[0])[1:]
            if 1 not in types:
                raise SystemExit(f"bench: Xvnc offers no security type None ({list(types)})")
            self.send(b"\x01")
            self.stage = "result"
        elif self.stage == "result":
            if self._take(4) is None:
                return False
            self.send(b"\x01")  # ClientInit: shared
            self.stage = "serverinit"
        elif self.stage == "serverinit":
            if len(self.buf) < 24:
                return False
            name_len = struct.unpack(">I", self.buf[20:24])[0]
            init = self._take(24 + name_len)
            if init is None:
                return False
            w, h = struct.unpack(">HH", init[:4])
            if (w, h) != (WIDTH, HEIGHT):
                raise SystemExit(f"bench: Xvnc is {w}x{h}, not {WIDTH}x{HEIGHT}")
            self.send(b"\x00\x00\x00\x00" + PIXEL_FORMAT
                      + struct.pack(">BxHi", 2, 1, 0))  # SetPixelFormat, SetEncodings [raw]
            self._request()
            self.stage = "messages"
        elif self.rects_left:
            head = self._take(12)
            if head is None:
                return False
            _x, _y, w, h, encoding = struct.unpack(">HHHHi", head)
            if encoding != 0:
                raise SystemExit(f"bench: unexpected encoding {encoding}")
            self.rects_left -= 1
            self.skip = w * h * 4
            if not self.skip and not self.rects_left:
                self._frame_done()
            return not self.skip
        else:
            if not self.buf:
                return False
            kind = self.buf[0]
            if kind == 0:  # FramebufferUpdate
                head = self._take(4)
                if head is None:
                    return False
                self.rects_left = struct.unpack(">xxH", head)[0]
            elif kind == 2:  # Bell
                self._take(1)
            elif kind == 3:  # ServerCutText
                if len(self.buf) < 8:
                    return False
                n = struct.unpack(">I", self.buf[4:8])[0]
                if self._take(8 + n) is None:
                    return False
            else:
                raise SystemExit(f"bench: unexpected server message {kind}")
        return True


class _Tcp(protocol.Protocol):
    def connectionMade(self):
        no_delay(self.transport)
        self.counter = RfbCounter(self.transport.write, self.factory.frames)
        self.factory.counter.callback(self.counter)

    def dataReceived(self, data):
        self.counter.feed(data)


class _Ws(WebSocketClientProtocol):
    def onOpen(self):
        no_delay(self.transport)
        self.counter = RfbCounter(lambda b: self.sendMessage(b, isBinary=True),
                                  self.factory.frames)
        self.factory.counter.callback(self.counter)

    def onMessage(self, payload, isBinary):
        self.counter.feed(payload)


async def over_tcp(port: int, frames: int) -> tuple[float, float]:
    factory = protocol.Factory.forProtocol(_Tcp)
    factory.frames, factory.counter = frames, defer.Deferred()
    proto = await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory)
    counter = await factory.counter
    result = await counter.finished
    proto.transport.loseConnection()
    return result


async def over_ws(url: str, frames: int) -> tuple[float, float]:
    factory = WebSocketClientFactory(url, protocols=["binary"])
    factory.protocol = _Ws
    factory.frames, factory.counter = frames, defer.Deferred()
    factory.setProtocolOptions(maxFramePayloadSize=0, maxMessagePayloadSize=0,
                               autoFragmentSize=0, tcpNoDelay=True, openHandshakeTimeout=30)
    connectWS(factory)
    counter = await factory.counter
    result = await counter.finished
    counter.send = lambda b: None
    return result


def start_xvnc(h: Harness) -> int:
    """Xvnc on a free display (it picks one: -displayfd) and a free loopback RFB port."""
    xvnc = shutil.which("Xvnc")
    if xvnc is None:
        raise SystemExit("bench: Xvnc (tigervnc-standalone-server) is not installed")
    port = free_port()
    read, write = os.pipe()
    h.spawn("xvnc", [xvnc, "-displayfd", str(write), "-geometry", f"{WIDTH}x{HEIGHT}",
                     "-depth", "24", "-rfbport", str(port), "-interface", "127.0.0.1",
                     "-SecurityTypes", "None", "-AlwaysShared", "-BlacklistThreshold",
                     "100000", "-nolisten", "tcp"], pass_fds=(write,))
    os.close(write)
    with os.fdopen(read) as f:
        display = f.readline().strip()
    if not display:
        raise SystemExit("bench: Xvnc did not start")
    wait_until(lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close()
               is None, what="Xvnc")
    return port


async def run(h: Harness, xvnc_port: int, ws_port: int, products: list, frames: int,
              reps: int) -> dict:
    mib = frames * FRAME_BYTES / (1024 * 1024)

    async def tcp():
        return await over_tcp(xvnc_port, frames)

    async def websockify():
        return await over_ws(f"ws://127.0.0.1:{ws_port}/", frames)

    async def ours(product):
        return await over_ws(await vnc_url(product), frames)

    paths = {"direct_tcp": (tcp, None),
             "websockify": (websockify, CpuMeter({"websockify": h.pid("websockify")}))}
    for product in products:
        paths[product.name] = (lambda p=product: ours(p), CpuMeter(product.pids()))
    samples = {name: {"fps": [], "mib_s": [], "cpu": []} for name in paths}
    for _ in range(reps):
        for name, (measure, cpu) in paths.items():
            if cpu is not None:
                cpu.start()
            fps, rate = await measure()
            samples[name]["fps"].append(round(fps, 2))
            samples[name]["mib_s"].append(round(rate, 1))
            if cpu is not None:
                samples[name]["cpu"].append(cpu.per_mib(mib))
    results: dict = {}
    for name, s in samples.items():
        results[name] = {"frames_per_s": median(s["fps"]), "mib_s": median(s["mib_s"]),
                         "samples": s}
        if s["cpu"]:
            results[name]["cpu_ms_per_mib"] = {
                k: median([c[k] for c in s["cpu"]]) for k in s["cpu"][0]}
    for product in products:
        ours_r = results[product.name]
        ours_r["ratio_over_websockify"] = round(
            ours_r["mib_s"] / results["websockify"]["mib_s"], 2)
        ours_r["ratio_over_direct_tcp"] = round(
            ours_r["mib_s"] / results["direct_tcp"]["mib_s"], 2)
    results["config"] = {"geometry": f"{WIDTH}x{HEIGHT}", "bytes_per_frame": FRAME_BYTES,
                         "frames_per_sample": frames, "reps": reps,
                         "cpus": os.cpu_count(),
                         "load_average": [round(x, 2) for x in os.getloadavg()],
                         "xvnc_rss_bytes": process_usage(h.pid("xvnc"))["rss_bytes"]}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--short", action="store_true", help="a quick run (make bench)")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another checkout to measure in the same run, as `baseline`")
    args = parser.parse_args()
    if args.short:
        args.frames, args.reps = 5, 2
    h = Harness()
    try:
        xvnc_port = start_xvnc(h)
        products = [h.start_product(xvnc_port)]
        if args.baseline is not None:
            products.append(h.start_product(xvnc_port, "baseline", args.baseline.resolve()))
        ws_port = h.start_websockify(xvnc_port)
        run_and_print(lambda: run(h, xvnc_port, ws_port, products, args.frames, args.reps))
    finally:
        h.close()


if __name__ == "__main__":
    main()
