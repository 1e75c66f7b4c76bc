"""Incremental snapshots at the conductor (docs/incremental.md): the parent's checks before
anything is created, the hidden index image created beside the snapshot image, the index's
verification and the parent's protection once the delta is verified. The same rules as the
agent's agent/src/incremental/ (glance-index.ts, parent-guard.ts); the property names are shared.
"""

from oslo_log import log

from bmsnap_ironic.glance import SnapshotImageError

LOG = log.getLogger(__name__)

INDEX = "bmsnap_index_image"
INDEX_SHA256 = "bmsnap_index_sha256"
INDEX_OF = "bmsnap_index_of"
PARENT = "bmsnap_parent_image"
PROTECTED = "bmsnap_protected"
PROTECTED_WHY = ("parent of bmsnap deltas: delete them first (bmsnap delete), or flatten them "
                 "(bmsnap flatten)")
#: 2 TiB fully used is 32 Mi clusters, 512 MiB of digests (glance-index.ts MAX_INDEX_BYTES).
MAX_INDEX_BYTES = 1 << 30


class NoUsableIndex(SnapshotImageError):
    """The parent cannot serve as one (or_full takes a full image instead)."""


def check_parent(images, parent_id, owner):
    """(parent id, its index image id) when PARENT_ID can carry a delta; else one line.

    NoUsableIndex for what or_full may fall back from; SnapshotImageError for a parent that is
    not there or not the node's project's (its protection would touch another project's image).
    """
    parent = images.find(parent_id)
    if parent is None:
        raise SnapshotImageError(msg="parent image %s does not exist" % parent_id)
    if owner and parent.get("owner") != owner:
        raise SnapshotImageError(msg="parent image %s belongs to another project than the "
                                     "snapshot (%s)" % (parent_id, owner))
    index_id, sha = parent.get(INDEX), parent.get(INDEX_SHA256)
    if not isinstance(index_id, str) or not isinstance(sha, str):
        raise NoUsableIndex(msg="parent image %s has no bmsnap cluster index (%s / %s unset): it "
                                "was taken without one (with_index false, raw, or an older "
                                "bmsnap): take a full snapshot first" % (parent_id, INDEX, INDEX_SHA256))
    if parent.get("status") != "active":
        raise NoUsableIndex(msg="parent image %s is %s, not active" % (parent_id, parent.get("status")))
    index = images.find(index_id)
    if index is None or index.get("status") != "active":
        raise NoUsableIndex(msg="the cluster index of parent image %s (image %s) is %s"
                                % (parent_id, index_id, "gone from Glance" if index is None
                                   else index.get("status")))
    return parent_id, index_id


def create_index_image(images, name, visibility, owner):
    """The queued, hidden image for the index of image NAME (as createIndexImage does)."""
    return images.create("%s.bmsnap-index" % name, "raw", visibility, owner, {"os_hidden": True})


def verify_index(images, image_id, index_id, sent):
    """Problems (strings) with the index the agent stored for IMAGE_ID, after _verify."""
    image, index = images.get(image_id), images.get(index_id)
    problems = []
    if index.get("status") != "active":
        problems.append("index image %s is %s" % (index_id, index.get("status")))
    if index.get(INDEX_OF) != image_id:
        problems.append("index image %s describes %s" % (index_id, index.get(INDEX_OF)))
    if image.get(INDEX) != index_id:
        problems.append("%s is %s, not %s" % (INDEX, image.get(INDEX), index_id))
    want = sent.get("index_sha256")
    if not want or image.get(INDEX_SHA256) != want:
        problems.append("%s differs from the agent's" % INDEX_SHA256)
    elif not problems and images.sha256(index_id, MAX_INDEX_BYTES) != want:
        problems.append("the index image's data does not have the SHA-256 the agent sent")
    return problems


def protect_parent(images, parent_id, delta_id):
    """Sets Glance's protected flag on the parent of a verified delta; a warning if it cannot."""
    try:
        parent = images.get(parent_id)
        if parent.get("protected") is not True:
            images.set_properties(parent, {"protected": True, PROTECTED: PROTECTED_WHY})
            LOG.info("Parent image %s protected from deletion while it has deltas (delta %s)",
                     parent_id, delta_id)
        return None
    except Exception as e:
        warning = ("the parent image %s could not be protected from deletion (%s): if it is "
                   "deleted, delta %s cannot be read; bmsnap flatten %s makes a standalone copy"
                   % (parent_id, e, delta_id, delta_id))
        LOG.warning(warning)
        return warning
