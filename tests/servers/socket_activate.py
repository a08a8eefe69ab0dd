"""What systemd-socket-activate does, for sockets the test bound itself (TCP and UDP on port 0,
which systemd-socket-activate cannot listen on): move the descriptors the test passed
(subprocess `pass_fds`) to 3, 4, ..., set LISTEN_PID / LISTEN_FDS / LISTEN_FDNAMES as a
service manager does, and exec the command in this same process.

    python socket_activate.py [--no-names] [--pid PID] FD[=NAME] ... -- COMMAND [ARG ...]

`--no-names` leaves LISTEN_FDNAMES unset; `--pid` announces another process's id.
"""

from __future__ import annotations

import fcntl
import os
import sys


def main(argv: list[str]) -> None:
    split = argv.index("--")
    options, command = argv[:split], argv[split + 1:]
    names_wanted = "--no-names" not in options
    pid = str(os.getpid())
    if "--pid" in options:
        pid = options[options.index("--pid") + 1]
        del options[options.index("--pid"):options.index("--pid") + 2]
    specs = [spec for spec in options if spec != "--no-names"]
    fds = [int(spec.partition("=")[0]) for spec in specs]
    names = [spec.partition("=")[2] or f"fd{3 + i}" for i, spec in enumerate(specs)]
    # First above every target number, so that no source is overwritten before it is moved.
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD, 3 + len(fds)) for fd in fds]
    for fd in fds:
        os.close(fd)
    for target, fd in enumerate(moved, start=3):
        os.dup2(fd, target)  # inheritable, as a service manager passes them
        os.close(fd)
    os.environ.update(LISTEN_PID=pid, LISTEN_FDS=str(len(fds)))
    if names_wanted:
        os.environ["LISTEN_FDNAMES"] = ":".join(names)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
