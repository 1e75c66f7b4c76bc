"""bmsnap for openstacksdk users: snapshot a bare-metal server or node into a Glance image.

    import openstack, bmsnap_openstack
    conn = openstack.connect(cloud="mycloud")
    image = bmsnap_openstack.snapshot(conn, "gpu-train-01", "my-env-2026-11")

See docs/python-api.md. ``openstack baremetal node snapshot`` (bmsnap_openstack.osc) is the
command-line front of the same calls.
"""

from bmsnap_openstack.api import Started, snapshot, start_snapshot, wait_for_snapshot
from bmsnap_openstack.errors import (ApiError, AuthError, BmsnapError, NotFoundError, SnapshotFailedError,
                                     UsageError, WaitTimeoutError)
from bmsnap_openstack.follow import Progress

__all__ = ["snapshot", "start_snapshot", "wait_for_snapshot", "Started", "Progress", "BmsnapError",
           "UsageError", "AuthError", "NotFoundError", "ApiError", "SnapshotFailedError", "WaitTimeoutError"]
