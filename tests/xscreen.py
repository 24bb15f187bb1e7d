"""A virtual X display for the window tests: Xvfb on a free display number, and screenshots.

Xvfb keeps its screen in a memory-mapped XWD file (``-fbdir``); a screenshot is that
file turned into a PNG here, with the standard library, so the tests need no image
tools beyond Xvfb itself.
"""

from __future__ import annotations

import contextlib
import os
import select
import struct
import subprocess
import time
import zlib
from pathlib import Path

from servers import command, missing_tool, required_tool

WIDTH, HEIGHT = 640, 480


class VirtualDisplay:
    """``Xvfb`` on the first free display number (``-displayfd``), never a fixed one."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.fbdir = workdir / "xvfb"
        self.display = ""
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20) -> None:
        binary = required_tool("Xvfb")
        self.fbdir.mkdir(parents=True, exist_ok=True)
        read, write = os.pipe()
        with (self.workdir / "xvfb.log").open("ab") as log:
            self.process = subprocess.Popen(
                [
                    binary,
                    "-displayfd",
                    str(write),
                    "-screen",
                    "0",
                    f"{WIDTH}x{HEIGHT}x24",
                    "-fbdir",
                    str(self.fbdir),
                    "-nolisten",
                    "tcp",
                ],
                pass_fds=(write,),
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        os.close(write)
        number = b""
        deadline = time.monotonic() + timeout
        try:
            while not number.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([read], [], [], left)[0]:
                    msg = f"Xvfb did not say its display within {timeout} s"
                    raise AssertionError(msg)
                chunk = os.read(read, 16)
                if not chunk:
                    msg = f"Xvfb exited: {(self.workdir / 'xvfb.log').read_text()}"
                    raise AssertionError(msg)
                number += chunk
        finally:
            os.close(read)
        self.display = f":{int(number)}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def frame(self) -> tuple[int, int, bytes]:
        """The screen now: width, height and RGB bytes, row by row."""
        return _xwd_to_rgb((self.fbdir / "Xvfb_screen0").read_bytes())

    def region(self, box: tuple[int, int, int, int]) -> bytes:
        """The RGB bytes of ``box`` (left, top, right, bottom) on the screen now."""
        width, _, rgb = self.frame()
        left, top, right, bottom = box
        return b"".join(
            rgb[(y * width + left) * 3 : (y * width + right) * 3] for y in range(top, bottom)
        )

    def xdotool(self, *args: str) -> None:
        """Move the pointer, click, type: what a user would do on this display."""
        subprocess.run(
            [required_tool("xdotool"), *args],
            env={"DISPLAY": self.display, "PATH": "/usr/bin:/bin"},
            check=True,
            timeout=20,
        )

    def screenshot(self, path: Path) -> Path:
        """Write the screen as a PNG to ``path``."""
        width, height, rgb = self.frame()
        path.write_bytes(_png(width, height, rgb))
        return path


def _xwd_to_rgb(data: bytes) -> tuple[int, int, bytes]:
    # The XWD header: 25 big-endian 32-bit fields, whatever the machine's byte order.
    h = struct.unpack(">25I", data[:100])
    header_size, width, height, byte_order = h[0], h[4], h[5], h[7]
    bits_per_pixel, bytes_per_line = h[11], h[12]
    masks, ncolors = (h[14], h[15], h[16]), h[19]
    if bits_per_pixel != 32 or masks != (0xFF0000, 0x00FF00, 0x0000FF):
        msg = f"unexpected Xvfb pixel format: {bits_per_pixel} bits, masks {masks}"
        raise AssertionError(msg)
    start = header_size + 12 * ncolors  # the colour map's entries are 12 bytes each
    rgb = bytearray(width * height * 3)
    # Least significant byte first: B, G, R, unused; else unused, R, G, B.
    r, g, b = (2, 1, 0) if byte_order == 0 else (1, 2, 3)
    for y in range(height):
        row = data[start + y * bytes_per_line : start + y * bytes_per_line + width * 4]
        out = y * width * 3
        rgb[out : out + width * 3 : 3] = row[r::4]
        rgb[out + 1 : out + width * 3 : 3] = row[g::4]
        rgb[out + 2 : out + width * 3 : 3] = row[b::4]
    return width, height, bytes(rgb)


def _png(width: int, height: int, rgb: bytes) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    stride = width * 3
    raw = b"".join(b"\0" + rgb[y * stride : (y + 1) * stride] for y in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


def wait_for_change(
    display: VirtualDisplay, box: tuple[int, int, int, int], before: bytes, within: float = 10
) -> bytes:
    """Wait until ``box`` on the screen differs from ``before`` and holds still; return it."""
    deadline = time.monotonic() + within
    last = before
    while time.monotonic() < deadline:
        now = display.region(box)
        if now != before:
            if now == last:  # the same twice in a row: drawn
                return now
            last = now
        time.sleep(0.1)
    msg = f"the screen did not change in {box} within {within} s"
    raise AssertionError(msg)


def require_tk() -> None:
    """Skip (or fail in CI) unless the project's Python has Tk."""
    found = subprocess.run(
        [command("python"), "-c", "import tkinter"], capture_output=True, check=False
    )
    if found.returncode != 0:
        missing_tool("the project's Python has no tkinter (scripts/test installs python3-tk)")


def keep(path: Path) -> None:
    """Copy a screenshot to ``$FLOATKEY_SCREENSHOTS`` when set (to look at after a run)."""
    target = os.environ.get("FLOATKEY_SCREENSHOTS")
    if target:
        with contextlib.suppress(OSError):
            Path(target).mkdir(parents=True, exist_ok=True)
            (Path(target) / path.name).write_bytes(path.read_bytes())
