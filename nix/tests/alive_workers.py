"""Prints how many workers the Spark master at URL (its web UI) reports ALIVE."""
import json
import sys
import urllib.request

with urllib.request.urlopen(sys.argv[1].rstrip("/") + "/json/", timeout=10) as response:
    status = json.load(response)
print(sum(1 for worker in status["workers"] if worker["state"] == "ALIVE"))
