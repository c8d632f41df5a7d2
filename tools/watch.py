"""Re-run the fast loop (make unit) whenever a file under plugins/, tests/, playbooks/ or roles/ changes.

    python3 tools/watch.py [make target]     default: unit (make watch); Ctrl-C stops it

It polls modification times once a second: no inotify package is needed.
"""

import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WATCHED = ("plugins", "tests", "playbooks", "roles")


def snapshot():
    times = {}
    for top in WATCHED:
        for directory, _dirs, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                if not name.endswith((".pyc", ".swp", "~")):
                    path = os.path.join(directory, name)
                    try:
                        times[path] = os.stat(path).st_mtime
                    except FileNotFoundError:
                        continue
    return times


def main():
    target = sys.argv[1] if len(sys.argv) > 1 else "unit"
    seen = None
    while True:
        now = snapshot()
        if now != seen:
            seen = now
            subprocess.run(["make", "--no-print-directory", "-C", ROOT, target], check=False)
            print("== watching %s; Ctrl-C stops" % ", ".join(WATCHED), flush=True)
        time.sleep(1)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
