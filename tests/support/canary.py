"""A module no test worker imports. Importing it at all leaves a file behind."""

import os

_marker = os.environ.get("TQUEUES_CANARY_IMPORT")
if _marker:
    with open(_marker, "w") as handle:
        handle.write("imported")


def touch(path: str) -> None:
    with open(path, "w") as handle:
        handle.write("ran")
