"""A stand-in client application for the supervisor tests.

Writes its licence environment to OUT.env, then runs until SIGTERM, which it records in
OUT.term before exiting 0. With ``--exit N`` it exits N at once instead; with
``--ignore-term`` it records SIGTERM as "ignored" and runs on (until SIGKILL). Each file
is written whole (written beside, then renamed): a test that sees it sees all of it.
"""

import json
import os
import signal
import sys
import time
from pathlib import Path

out = Path(sys.argv[1])


def record(suffix: str, text: str) -> None:
    path = out.with_suffix(suffix)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


env = {k: v for k, v in os.environ.items() if k.startswith("FLOATKEY_")}
env["license_file_contents"] = Path(env["FLOATKEY_LICENSE_FILE"]).read_text()
record(".env", json.dumps(env))
if len(sys.argv) > 3 and sys.argv[2] == "--exit":
    sys.exit(int(sys.argv[3]))


def on_term(signum, frame):
    record(".term", str(signum))
    sys.exit(0)


signal.signal(signal.SIGTERM, on_term)
if len(sys.argv) > 2 and sys.argv[2] == "--ignore-term":
    signal.signal(signal.SIGTERM, lambda *_: record(".term", "ignored"))
while True:
    time.sleep(0.05)
