#!/usr/bin/env python3
"""A screenshot of a page once it shows some text, through the DevTools protocol of a headless
Chromium (standard library only): for pages that render over a websocket, which Chromium's own
--screenshot takes before they have drawn anything.

    cdp-screenshot.py CHROMIUM URL TEXT OUT.png [WIDTHxHEIGHT]

Waits (at most 60 s) until TEXT appears in the page's text, shadow roots included.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

# The page's text, shadow roots included (the Home Assistant frontend is web components).
DEEP_TEXT = """(() => {
  const out = [];
  const walk = (n) => {
    if (n.nodeType === Node.TEXT_NODE) out.push(n.textContent);
    if (n.shadowRoot) walk(n.shadowRoot);
    for (const c of n.childNodes) walk(c);
  };
  walk(document.documentElement);
  return out.join(' ');
})()"""


class WebSocket:
    """A minimal websocket client (RFC 6455): text frames out (masked), whole messages in."""

    def __init__(self, url: str):
        assert url.startswith("ws://")
        host_port, path = url[5:].split("/", 1)
        host, port = host_port.split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=60)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET /{path} HTTP/1.1\r\nHost: {host_port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                raise ConnectionError("websocket handshake: connection closed")
            head += chunk
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"websocket handshake: {head!r}")

    def _exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("websocket closed")
            data += chunk
        return data

    def send(self, text: str):
        payload = text.encode()
        header = bytes([0x81])
        n = len(payload)
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 65536:
            header += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def recv(self) -> str:
        message = b""
        while True:
            b0, b1 = self._exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._exact(8))[0]
            data = self._exact(n)
            if b0 & 0x0F in (0x8, 0x9, 0xA):  # close, ping, pong: not expected from DevTools
                if b0 & 0x0F == 0x8:
                    raise ConnectionError("websocket closed by the browser")
                continue
            message += data
            if b0 & 0x80:
                return message.decode()


class Page:
    """One DevTools session on a page target."""

    def __init__(self, ws_url: str):
        self.ws = WebSocket(ws_url)
        self.next_id = 0

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]


def main(browser: str, url: str, text: str, out: str, size: str = "1280x900"):
    width, height = (int(v) for v in size.split("x"))
    profile = tempfile.mkdtemp(prefix="coffeebot-cdp.")
    proc = subprocess.Popen(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={profile}", "--remote-debugging-port=0", f"--window-size={width},{height}",
         "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = os.path.join(profile, "DevToolsActivePort")
        deadline = time.monotonic() + 30
        while not (os.path.exists(port_file) and open(port_file).read().count("\n") >= 1):
            if time.monotonic() > deadline or proc.poll() is not None:
                sys.exit("cdp-screenshot: Chromium did not open its DevTools port")
            time.sleep(0.1)
        port = open(port_file).read().split("\n")[0]
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
        page = Page(next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"])
        page.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=False)
        page.call("Page.enable")
        page.call("Page.navigate", url=url)
        deadline = time.monotonic() + 60
        while True:
            shown = page.call("Runtime.evaluate", expression=DEEP_TEXT, returnByValue=True)["result"].get("value", "")
            if text in shown:
                break
            if time.monotonic() > deadline:
                sys.exit(f"cdp-screenshot: {text!r} not on the page after 60 s; it shows: {shown[:500]!r}")
            time.sleep(0.5)
        # The text is there; let the page's last pieces (icons, fonts) draw.
        page.call("Runtime.evaluate", expression="new Promise(r => setTimeout(r, 2000))", awaitPromise=True)
        shot = page.call("Page.captureScreenshot", format="png")
        with open(out, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
