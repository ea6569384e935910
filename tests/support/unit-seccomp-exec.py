#!/usr/bin/python3
"""Runs a program under the seccomp filter a systemd unit would give it, without systemd.

    unit-seccomp-exec.py UNIT_FILE PROGRAM [ARGS...]

Reads the unit's SystemCallFilter= lines (an allow list, then `~` deny lists removed from it),
SystemCallArchitectures=native and RestrictAddressFamilies=, expands the `@group` names with
`systemd-analyze syscall-filter` (the same tables systemd uses), builds the filter with
libseccomp (the library systemd itself uses) and execs PROGRAM under it. As under systemd, a
system call outside the allow list kills the process with SIGSYS, and socket() of an address
family the unit does not list fails with EAFNOSUPPORT.

The tests use it where systemd is not PID 1 (containers, CI), so that `systemd-run -p ...`
cannot apply the unit's sandbox. Debian: python3-seccomp and systemd (for systemd-analyze).
"""

import errno
import os
import socket
import subprocess
import sys

import seccomp


def unit_values(path, key):
    """Every value of `key=` in the [Service] section, in order, split on whitespace."""
    values = []
    section = None
    with open(path, encoding="utf-8") as unit:
        for line in unit:
            line = line.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                section = line
                continue
            name, sep, value = line.partition("=")
            if section == "[Service]" and sep and name.strip() == key:
                values.append(value.strip())
    return values


def groups():
    """systemd's syscall groups: name -> list of members (syscalls or @groups)."""
    text = subprocess.run(
        ["systemd-analyze", "syscall-filter", "--no-pager"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    table = {}
    current = None
    for line in text.splitlines():
        if line.startswith("@"):
            current = table.setdefault(line.strip(), [])
        elif line.startswith("    ") and current is not None:
            item = line.strip()
            if item and not item.startswith("#"):
                current.append(item)
        else:
            current = None
    return table


def expand(names, table, seen=None):
    """The syscall names of `names`, groups expanded recursively."""
    seen = set() if seen is None else seen
    out = set()
    for name in names:
        if name.startswith("@"):
            if name in seen:
                continue
            seen.add(name)
            if name not in table:
                sys.exit(f"unit-seccomp-exec: unknown group {name}")
            out |= expand(table[name], table, seen)
        else:
            out.add(name)
    return out


def allowed_syscalls(unit, table):
    """The allow list of the unit's SystemCallFilter= lines, as systemd computes it."""
    allow = None
    for value in unit_values(unit, "SystemCallFilter"):
        deny = value.startswith("~")
        names = expand(value.lstrip("~").split(), table)
        if deny:
            if allow is None:
                sys.exit("unit-seccomp-exec: only an allow list followed by deny lists is supported")
            allow -= names
        else:
            # systemd always allows @default with an allow list.
            allow = (allow or expand(["@default"], table)) | names
    if allow is None:
        sys.exit("unit-seccomp-exec: the unit has no SystemCallFilter=")
    return allow


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    unit, program = sys.argv[1], sys.argv[2:]
    table = groups()
    allow = allowed_syscalls(unit, table)
    if unit_values(unit, "SystemCallArchitectures") not in ([], ["native"]):
        sys.exit("unit-seccomp-exec: only SystemCallArchitectures=native is supported")

    families = set()
    for value in unit_values(unit, "RestrictAddressFamilies"):
        families |= {getattr(socket, f) for f in value.split()}

    # Native architecture only (a new filter holds just the native one), others killed.
    fltr = seccomp.SyscallFilter(defaction=seccomp.KILL_PROCESS)
    known = 0
    for name in sorted(allow):
        if families and name == "socket":
            continue  # allowed below, for the unit's families only
        try:
            fltr.add_rule(seccomp.ALLOW, name)
            known += 1
        except (RuntimeError, ValueError, OSError):
            pass  # a call of another architecture, or newer than this libseccomp

    if families and "socket" in allow:
        for family in sorted(families):
            fltr.add_rule(seccomp.ALLOW, "socket", seccomp.Arg(0, seccomp.EQ, family))
        refuse = seccomp.ERRNO(errno.EAFNOSUPPORT)
        for family in range(0, max(families) + 1):
            if family not in families:
                fltr.add_rule(refuse, "socket", seccomp.Arg(0, seccomp.EQ, family))
        fltr.add_rule(refuse, "socket", seccomp.Arg(0, seccomp.GT, max(families)))

    print(f"unit-seccomp-exec: {known} system calls allowed", file=sys.stderr, flush=True)
    fltr.load()
    os.execv(program[0], program)


if __name__ == "__main__":
    main()
