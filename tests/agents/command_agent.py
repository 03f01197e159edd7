"""A command agent: any program that reads OPENAI_BASE_URL / OPENAI_API_KEY / ALIGHTNING_TASK.

Plain urllib, no SDK: agents in any language work the same way. Prints its reward last.
"""

import json
import os
import sys
import urllib.request

task = json.loads(os.environ["ALIGHTNING_TASK"])
if task["id"].split("-")[1] == "4":  # guess-number task ids: <split>-<secret>-<repeat>
    print("cannot solve this one", file=sys.stderr)
    sys.exit(3)
body = {"model": os.environ["OPENAI_MODEL"], "messages": [{"role": "user", "content": "guess my number"}]}
request = urllib.request.Request(os.environ["OPENAI_BASE_URL"] + "/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Authorization": "Bearer " + os.environ["OPENAI_API_KEY"],
                                          "Content-Type": "application/json"})
with urllib.request.urlopen(request) as response:
    reply = json.loads(response.read())["choices"][0]["message"]["content"]
print("some log line")
print(json.dumps({"reward": 1.0 if reply else 0.5}))
