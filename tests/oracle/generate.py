"""Regenerate every loom oracle fixture under tests/data/oracle/.

    /usr/bin/python3 tests/oracle/generate.py

Needs only torch (Debian's torch 1.13 in /usr/bin/python3) and numpy.
Output is deterministic: rerunning reproduces byte-identical files.
"""

import hashlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402
import gen_models  # noqa: E402
import gen_ops  # noqa: E402


def main():
    C.setup()
    gen_models.main()
    gen_ops.main()
    total = 0
    print("files:")
    for root, _, files in sorted(os.walk(C.OUT_DIR)):
        for f in sorted(files):
            path = os.path.join(root, f)
            with open(path, "rb") as fh:
                data = fh.read()
            total += len(data)
            print("  %-40s %8d  sha256:%s" % (os.path.relpath(path, C.OUT_DIR), len(data),
                                             hashlib.sha256(data).hexdigest()[:16]))
    print("total %d bytes" % total)


if __name__ == "__main__":
    main()
