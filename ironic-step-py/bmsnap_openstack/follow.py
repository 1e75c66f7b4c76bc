"""Follows a node through a snapshot (active -> servicing -> service wait -> ... -> active or
service failed) by reading it every few seconds, as agent/src/trigger/follow.ts does, passing
on the progress the bmsnap deploy interface copies into driver_internal_info.bmsnap_snapshot."""

import collections
import time

from bmsnap_openstack.errors import SnapshotFailedError, WaitTimeoutError
from bmsnap_openstack.http import one_line

#: What on_progress gets: the node's provision state and, while the agent copies, its progress.
Progress = collections.namedtuple(
    "Progress", "node provision_state phase bytes total percent mb_per_s")

_SERVICING = {"active", "servicing", "service wait", "service hold", "service failed"}
#: How long to wait for last_error after "service failed" (an abort in Ironic 29 sets none; the
#: plugin fills it in within ~10 s).
LAST_ERROR_GRACE_S = 20


def label(node):
    return "%s (%s)" % (node["name"], node["uuid"]) if node.get("name") else node["uuid"]


def follow_snapshot(ironic, uuid, previous_image_id=None, poll_seconds=2.0, timeout=None,
                    on_progress=None, clock=time.monotonic, sleep=time.sleep):
    """The node's bmsnap_snapshot record once its image is active; SnapshotFailedError with
    last_error otherwise, WaitTimeoutError after TIMEOUT seconds (None / 0: no limit)."""
    started = clock()
    busy_seen = False
    failed_at = None
    last_seen = None
    while True:
        n = ironic.get_node(uuid)
        if n is None:
            raise SnapshotFailedError("node %s disappeared while it was being snapshotted" % uuid, uuid)
        state = n["provision_state"]
        info = (n.get("driver_internal_info") or {}).get("bmsnap_snapshot") or {}
        p = info.get("progress") or {}
        event = Progress(n["uuid"], state, p.get("phase"), p.get("bytes"), p.get("total"),
                         p.get("percent"), p.get("mb_per_s"))
        if on_progress and event != last_seen:
            on_progress(event)
        last_seen = event
        # (service failed keeps target_provision_state "active": only the lock says the conductor is
        # done; where Ironic hides the lock from the caller, the states alone and last_error's grace)
        settled = not n.get("reservation") and (state == "service failed" or not n.get("target_provision_state"))
        if state not in _SERVICING:
            raise SnapshotFailedError('node %s went to "%s" instead of servicing: something else is driving it'
                                      % (label(n), state), n["uuid"], n.get("last_error"))
        if state == "service failed" and settled:
            failed_at = failed_at or clock()
            if n.get("last_error") or clock() - failed_at > LAST_ERROR_GRACE_S:
                why = (one_line(n["last_error"]) if n.get("last_error")
                       else "service failed (Ironic's policy hides last_error from your project: ask the node's "
                            "owner or an admin)" if "last_error" in n.get("redacted", ())
                       else "service failed (Ironic recorded no last_error)")
                raise SnapshotFailedError("snapshot of node %s failed: %s" % (label(n), why),
                                          n["uuid"], n.get("last_error"))
        elif state == "active" and settled and (
                busy_seen or (info.get("image_id") and info["image_id"] != previous_image_id)):
            if info.get("state") == "active" and info.get("image_id"):
                return info
            if "driver_internal_info" in n.get("redacted", ()):
                raise SnapshotFailedError(
                    "node %s is active again, but Ironic's policy hides driver_internal_info (where the snapshot's "
                    "image is recorded) from your project: ask the node's owner or an admin for bmsnap_snapshot"
                    % label(n), n["uuid"])
            raise SnapshotFailedError(
                "node %s is active again but recorded no snapshot image (bmsnap_snapshot state: %s); "
                "does it use the bmsnap deploy interface?" % (label(n), info.get("state") or "none"),
                n["uuid"], n.get("last_error"))
        if state != "active" or n.get("target_provision_state"):
            busy_seen = True
        if timeout and clock() - started > timeout:
            raise WaitTimeoutError("timed out after %s s waiting for node %s (%s); the snapshot goes on: "
                                   "openstack baremetal node show %s" % (timeout, label(n), state, n["uuid"]))
        sleep(poll_seconds)
