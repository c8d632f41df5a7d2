"""TEST STAND-IN for Mastodon's processes; Mastodon itself cannot be installed on the test machines.

    stand-in.py web|streaming   answers HTTP on $BIND:$PORT with its service name, argv and environment
    stand-in.py sidekiq ARGS    sleeps, so its argv and environment can be read from /proc
"""

import http.server
import json
import os
import sys
import time

SERVICE = sys.argv[1]


class Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"service": SERVICE, "path": self.path, "argv": sys.argv,
                           "environment": dict(os.environ)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if SERVICE == "sidekiq":
    while True:
        time.sleep(3600)
else:
    http.server.HTTPServer((os.environ["BIND"], int(os.environ["PORT"])), Echo).serve_forever()
