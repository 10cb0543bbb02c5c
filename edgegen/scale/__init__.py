"""Scale-out: run precompute and fleet builds on a Ray cluster instead of this process.

`local` (the default) runs everything here; `ray` runs it on a Ray cluster (`--ray-address`, or
a Ray instance started on this machine for the run). Ray is an optional extra: only the modules
of this package import it, and only when the ray executor is asked for.
"""

from __future__ import annotations

from ..errors import EdgegenError

EXECUTORS = ("local", "ray")


class ClusterError(EdgegenError):
    """Ray is not installed, the cluster cannot be reached, or its workers kept dying."""


def check_executor(name: str, address: str | None = None) -> None:
    """Refuse an executor name that is not one of EXECUTORS, and a Ray address without the Ray executor (it was
    ignored: the work ran here)."""
    if name not in EXECUTORS:
        raise ClusterError(f"unknown executor {name!r}; use one of {', '.join(EXECUTORS)}")
    if address is not None and name != "ray":
        raise ClusterError(f"--ray-address {address} applies to --executor ray (got --executor {name}); add "
                           "--executor ray, or leave the address out")
