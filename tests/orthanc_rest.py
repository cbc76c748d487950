"""Talk to Orthanc's REST API from inside the test's network namespace (run with ``ip netns exec``).

Usage: ``python orthanc_rest.py METHOD URL [BODY_FILE ...]``: one request per body file (or one
without a body), with HTTP basic authentication from ``$ORTHANC_AUTH`` (``user:password``);
prints a JSON list of ``[status, base64 of the answer]``.
"""

import base64
import json
import os
import sys
import urllib.error
import urllib.request


def main(argv):
    method, url, *bodies = argv
    out = []
    for body in bodies or [None]:
        data = open(body, "rb").read() if body else None
        req = urllib.request.Request(url, data=data, method=method)
        if os.environ.get("ORTHANC_AUTH"):
            req.add_header("Authorization", "Basic " + base64.b64encode(os.environ["ORTHANC_AUTH"].encode()).decode())
        try:
            with urllib.request.urlopen(req, timeout=60) as rsp:
                out.append([rsp.status, base64.b64encode(rsp.read()).decode()])
        except urllib.error.HTTPError as exc:
            out.append([exc.code, base64.b64encode(exc.read()).decode()])
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
