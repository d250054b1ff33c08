"""Open a page in real headless Chromium (Debian's ``chromium``) and report what a person would see.

Driven through the DevTools protocol over ``--remote-debugging-pipe`` (JSON messages separated by NUL bytes on file
descriptors 3 and 4), so no websocket client, Playwright or browser download is needed: the standard library only.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--remote-debugging-pipe"]

# what the page reports about itself once loaded: every image's natural size, every element that references a URL
_INSPECT = """JSON.stringify({
  title: document.title,
  height: document.documentElement.scrollHeight,
  imgs: [...document.images].map(i => ({src: i.getAttribute('src').slice(0, 120), complete: i.complete,
         w: i.naturalWidth, h: i.naturalHeight, shownW: i.getBoundingClientRect().width})),
  refs: [...document.querySelectorAll('[src],[href]')].map(e => (e.getAttribute('src') || e.getAttribute('href'))
         .slice(0, 120)),
  notes: [...document.querySelectorAll('li.note')].map(e => e.textContent),
  figures: document.querySelectorAll('figure').length,
})"""


def find_chromium() -> Optional[str]:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """One headless Chromium with one page; ``call`` sends a DevTools command and returns its result."""

    def __init__(self, executable: str, width: int = 1280, height: int = 900):
        self._profile = tempfile.mkdtemp(prefix="rd-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # the child's ends moved to descriptors >= 10, so that putting them on 3 and 4 never clobbers one another
        for fd in (to_browser_r, from_browser_w):
            high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
            os.close(fd)
            if fd == to_browser_r:
                to_browser_r = high
            else:
                from_browser_w = high

        def _fds():  # in the child: the protocol's fixed descriptors 3 (commands in) and 4 (replies out)
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        self.proc = subprocess.Popen([executable, *FLAGS, f"--user-data-dir={self._profile}", "about:blank"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     preexec_fn=_fds, close_fds=False)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=True)
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    # -- protocol
    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise TimeoutError("chromium did not answer")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                err = self.proc.stderr.read().decode(errors="replace")[-2000:] if self.proc.stderr else ""
                raise RuntimeError(f"chromium closed the DevTools pipe: {err}")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, session: bool = False, timeout: float = 60, **params) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        for ev in self.events:
            if ev.get("method") == method:
                return ev
        while True:
            ev = self._read_message(deadline)
            self.events.append(ev)
            if ev.get("method") == method:
                return ev

    # -- what a test needs
    def open(self, path: Path) -> dict:
        """Load a local file, wait for its load event (all images fetched), return the page's self-description."""
        self.events.clear()
        self.call("Page.navigate", session=True, url=Path(path).resolve().as_uri())
        self.wait_for("Page.loadEventFired")
        return json.loads(self.evaluate(_INSPECT))

    def evaluate(self, expression: str):
        res = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True,
                        awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"page script failed: {res['exceptionDetails']}")
        return res["result"].get("value")

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions, failed loads and error log entries seen since the last ``open``."""
        out = []
        for ev in self.events:
            m, p = ev.get("method"), ev.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
            elif m == "Runtime.exceptionThrown":
                out.append("exception: " + p["exceptionDetails"].get("text", ""))
            elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
            elif m == "Network.loadingFailed":
                out.append(f"failed load: {p.get('errorText')} (request {p.get('requestId')})")
        return out

    def screenshot(self, path: Path, selector: Optional[str] = None) -> Path:
        """PNG of the first screen, or of the element matched by ``selector`` (scrolled into view)."""
        params = {"format": "png"}
        if selector:
            rect = self.evaluate(f"(() => {{const e = document.querySelector({json.dumps(selector)});"
                                 "e.scrollIntoView(); const r = e.getBoundingClientRect();"
                                 "return {x: r.x + scrollX, y: r.y + scrollY, width: r.width, height: r.height};})()")
            params.update(clip={**rect, "scale": 1}, captureBeyondViewport=True)
        data = self.call("Page.captureScreenshot", session=True, **params)["data"]
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
