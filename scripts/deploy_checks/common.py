"""What the deploy checks share: their command line and their `ok`/`FAIL` lines.

scripts/check-deploy.sh runs the programs beside this module; each prints one line per check,
in the same form as the shell script's own (`  ok   <what>` or `  FAIL <what>`), so that the
whole run reads as one list.
"""
import argparse
import os
import sys


def parser(doc):
    """An argument parser whose --help is the program's module docstring."""
    summary, _, details = doc.strip().partition("\n")
    return argparse.ArgumentParser(description=summary, epilog=details.strip() or None,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


class Checks:
    """Prints each check as it is made, counts those passed and keeps those failed."""

    def __init__(self):
        self.passed = 0
        self.failures = []

    def check(self, ok, what):
        """Records one check: `ok` is whether it passed, `what` says what it promises."""
        print(("  ok   " if ok else "  FAIL ") + what)
        if ok:
            self.passed += 1
        else:
            self.failures.append(what)
        return ok

    def finish(self, record=None):
        """Exits 1 if a check failed, else 0.

        With `record` (a path prefix), first writes the number of checks passed to
        `<record>-passed` and, if any failed, their list to `<record>-failed`, for the shell
        script to count and to quote in its `FAIL` line.
        """
        if record is not None:
            with open(record + "-passed", "w") as f:
                f.write(str(self.passed))
            if self.failures:
                with open(record + "-failed", "w") as f:
                    f.write("; ".join(self.failures))
        sys.exit(1 if self.failures else 0)

