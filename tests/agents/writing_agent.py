"""A command agent that calls the policy, tries to write outside its scratch folder, and reports."""

import json
import os
import sys
import urllib.request

body = {"model": os.environ["OPENAI_MODEL"], "messages": [{"role": "user", "content": "guess my number"}]}
request = urllib.request.Request(os.environ["OPENAI_BASE_URL"] + "/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Authorization": "Bearer " + os.environ["OPENAI_API_KEY"],
                                          "Content-Type": "application/json"})
urllib.request.urlopen(request).read()  # the endpoint on 127.0.0.1 is reachable from the sandbox
target = sys.argv[1]
try:
    with open(target, "w") as handle:
        handle.write("overwritten")
    wrote_outside = True
except OSError:
    wrote_outside = False
with open("scratch.txt", "w") as handle:  # its own working directory is writable
    handle.write("ok")
print(json.dumps({"reward": 0.0 if wrote_outside else 1.0, "answer": f"pid={os.getpid()} uid={os.getuid()}"}))
