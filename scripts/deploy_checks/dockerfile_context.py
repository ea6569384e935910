"""Rebuilds the Dockerfile's build context and checks that every COPY source gets through.

Copies into CONTEXT the files under each SOURCE (the sources of the Dockerfile's COPY lines from
the build context) that .dockerignore lets through, as Docker does: the last matching pattern
wins, a pattern that matches a directory matches everything below it, `!` lets through again,
`*` and `?` stop at `/`, `**` does not. Prints, per source, how many files it keeps and each file
.dockerignore keeps out; a source that is missing from the repository, or of which nothing gets
through, is a FAIL line and exit status 1.

Run from the repository root (it reads ./.dockerignore and the sources relative to it).
"""
import os
import re
import shutil

from common import Checks, parser


def regex(pattern):
    """A .dockerignore pattern as a regular expression over /-separated paths."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        else:
            out += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
            i += 1
    return re.compile(out)


def load_rules(path):
    """The patterns of a .dockerignore file as (negated, regex) pairs, in order."""
    rules = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                negate = line.startswith("!")
                rules.append((negate, regex(os.path.normpath(line.lstrip("!").strip()).lstrip("/"))))
    return rules


def ignored(rules, path):
    """Whether .dockerignore keeps `path` out of the build context."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    result = False
    for negate, rx in rules:
        if any(rx.fullmatch(p) for p in prefixes):
            result = not negate
    return result


def main():
    args = parser(__doc__)
    args.add_argument("context", metavar="CONTEXT", help="directory to copy the build context into")
    args.add_argument("sources", metavar="SOURCE", nargs="+", help="a COPY source, relative to the root")
    args = args.parse_args()

    rules = load_rules(".dockerignore")
    checks = Checks()
    for src in map(os.path.normpath, args.sources):
        if not os.path.exists(src):
            checks.check(False, f"COPY {src}: not in the repository")
            continue
        files = [src] if os.path.isfile(src) else sorted(
            os.path.join(d, f) for d, _, fs in os.walk(src) for f in fs)
        kept = [f for f in files if not ignored(rules, f)]
        if not kept:
            checks.check(False, f"COPY {src}: .dockerignore lets nothing of it through")
        for f in files:
            if f in kept:
                os.makedirs(os.path.join(args.context, os.path.dirname(f)), exist_ok=True)
                shutil.copy2(f, os.path.join(args.context, f))
            else:
                print(f"  note: .dockerignore keeps {f} out of the build")
        print(f"  COPY {src}: {len(kept)} file(s)")
    checks.finish()


if __name__ == "__main__":
    main()
