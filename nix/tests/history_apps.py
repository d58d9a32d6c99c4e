"""Prints the applications the Spark History Server at URL lists as completed.

One line each: the application's name and the user who ran it
(e.g. "sum-of-squares analyst"), from its REST API /api/v1/applications.
"""
import json
import sys
import urllib.request

with urllib.request.urlopen(sys.argv[1].rstrip("/") + "/api/v1/applications", timeout=10) as response:
    apps = json.load(response)
for app in apps:
    attempts = app["attempts"]
    if attempts and all(attempt["completed"] for attempt in attempts):
        print(app["name"], attempts[0]["sparkUser"])
