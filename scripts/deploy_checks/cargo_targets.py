"""Lists the targets `cargo build` builds, from `cargo metadata --format-version 1` on stdin.

Prints one line per lib, bin, build-script or proc-macro target of the first package:
its kinds (comma-separated), its name and its source file relative to ROOT. check-deploy.sh
compares the list of the repository with that of the Dockerfile's build context.
"""
import json
import os
import sys

from common import parser


def main():
    args = parser(__doc__)
    args.add_argument("root", metavar="ROOT", help="the package's directory (source paths are printed relative to it)")
    args = args.parse_args()
    for t in json.load(sys.stdin)["packages"][0]["targets"]:
        if set(t["kind"]) & {"lib", "bin", "custom-build", "proc-macro"}:
            print(",".join(sorted(t["kind"])), t["name"], os.path.relpath(t["src_path"], args.root))


if __name__ == "__main__":
    main()
