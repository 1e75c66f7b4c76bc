"""The ``snapshot`` step's arguments: their choices, ARGSINFO and their checks, without Ironic
imports. The conductor validates with them (args.py), and the client side (bmsnap_openstack)
checks the same way before it asks Ironic to start anything: Ironic runs the step's own
validation only once servicing has begun, too late for a one-line refusal."""

import re

VISIBILITIES = ("private", "shared", "community", "public")
DISK_FORMATS = ("qcow2", "raw")
COMPRESSIONS = ("zstd", "zlib", "none")
ROOT_HINTS = ("name", "size", "serial", "wwn", "model", "vendor", "rotational", "by_path")

_PROP_KEY = re.compile(r"^[A-Za-z0-9_:.-]{1,255}$")
# Operation names are checked by the agent, which knows them; here only the shape.
_SCRUB_LIST = re.compile(r"^[a-z-]+(,[a-z-]+)*$")
_IMAGE_ID = re.compile(r"^[0-9a-fA-F-]{32,36}$")
# Glance core fields and ours: not settable through ``properties``.
_RESERVED = {"id", "name", "status", "owner", "visibility", "disk_format", "container_format",
             "size", "checksum", "os_hash_algo", "os_hash_value", "min_disk", "min_ram",
             "protected", "locations", "direct_url", "created_at", "updated_at", "tags"}

ARGSINFO = {
    "image_name": {"description": "Name of the Glance image (default: snapshot-<node>-<UTC time>)",
                   "required": False},
    "visibility": {"description": "private (default), shared, community or public", "required": False},
    "disk_format": {"description": "qcow2 (default) or raw", "required": False},
    "compression": {"description": "qcow2 compression: zstd (default) or zlib (readable by "
                                   "qemu < 5.1) or none", "required": False},
    "properties": {"description": "Extra image properties: an object of strings", "required": False},
    "root_device_hints": {"description": "Which disk to capture, as root device hints (default: "
                                         "the node's root_device property, else the smallest "
                                         "disk of at least 4 GiB)", "required": False},
    "scrub": {"description": "Remove per-machine state from the image, never from the disk: true "
                             "for the defaults (ssh-hostkeys, machine-id, cloud-init, logs, "
                             "shell-history, dhcp-leases, tmp) or a comma list of operations "
                             "(default, ..., ssh-userdir)", "required": False},
    "scrub_paths": {"description": "With scrub: extra paths to remove from the image's Linux root "
                                   "filesystems (a list of absolute paths)", "required": False},
    "parent": {"description": "Glance image id of an earlier bmsnap snapshot of this disk (with "
                              "its cluster index): upload only the clusters changed since, as a "
                              "delta on it (docs/incremental.md)", "required": False},
    "or_full": {"description": "With parent: if the parent has no usable index, take a full "
                               "image instead of failing (default false)", "required": False},
    "with_index": {"description": "Store the cluster index beside a qcow2 image (a hidden image), "
                                  "for later deltas (default true)", "required": False},
}


class StepArgsError(ValueError):
    """A bad ``snapshot`` step argument; the message is one line, "snapshot step: ..."."""


def _bad(msg):
    raise StepArgsError("snapshot step: %s" % msg)


def check(args):
    """Returns the normalised arguments or raises StepArgsError (one clear line)."""
    unknown = sorted(set(args) - set(ARGSINFO))
    if unknown:
        _bad("unknown argument(s) %s" % ", ".join(unknown))
    out = {}
    name = args.get("image_name")
    if name is not None:
        if not isinstance(name, str) or not name.strip() or len(name) > 255:
            _bad("image_name must be a non-empty string of at most 255 characters")
        out["image_name"] = name
    for key, allowed, default in (("visibility", VISIBILITIES, "private"),
                                  ("disk_format", DISK_FORMATS, "qcow2"),
                                  ("compression", COMPRESSIONS, "zstd")):
        value = args.get(key, default)
        if value not in allowed:
            _bad("%s must be one of %s" % (key, ", ".join(allowed)))
        out[key] = value
    props = args.get("properties") or {}
    if not isinstance(props, dict):
        _bad("properties must be an object")
    for k, v in props.items():
        if not isinstance(k, str) or not _PROP_KEY.match(k) or k in _RESERVED:
            _bad("property name %r is not allowed" % (k,))
        if not isinstance(v, str):
            _bad("property %s must be a string (Glance stores strings)" % k)
    out["properties"] = dict(props)
    hints = args.get("root_device_hints")
    if hints is not None:
        if not isinstance(hints, dict) or not hints:
            _bad("root_device_hints must be a non-empty object")
        bad = sorted(set(hints) - set(ROOT_HINTS))
        if bad:
            _bad("unsupported root device hint(s) %s" % ", ".join(bad))
        out["root_device_hints"] = hints
    scrub = args.get("scrub")
    if scrub is not None and scrub is not False:
        if scrub is not True and not (isinstance(scrub, str) and _SCRUB_LIST.match(scrub)):
            _bad("scrub must be true or a comma list of operation names")
        out["scrub"] = scrub
    paths = args.get("scrub_paths")
    if paths is not None:
        if "scrub" not in out:
            _bad("scrub_paths needs scrub")
        if (not isinstance(paths, list) or not all(isinstance(p, str) and p.startswith("/")
                                                   and ".." not in p.split("/") and p != "/"
                                                   for p in paths)):
            _bad("scrub_paths must be a list of absolute paths (no '..', not '/')")
        out["scrub_paths"] = paths
    _check_incremental(args, out)
    return out


def _check_incremental(args, out):
    """parent / or_full / with_index: the index defaults to on for qcow2; a delta needs it."""
    qcow2 = out["disk_format"] == "qcow2"
    for key in ("or_full", "with_index"):
        if args.get(key) is not None and not isinstance(args[key], bool):
            _bad("%s must be true or false" % key)
    with_index = args.get("with_index")
    if with_index and not qcow2:
        _bad("with_index needs disk_format qcow2")
    out["with_index"] = qcow2 if with_index is None else with_index
    parent = args.get("parent")
    if parent is None:
        if args.get("or_full") is not None:
            _bad("or_full goes with parent")
        return
    if not isinstance(parent, str) or not _IMAGE_ID.match(parent):
        _bad("parent must be a Glance image id")
    if not qcow2:
        _bad("parent needs disk_format qcow2")
    if with_index is False:
        _bad("parent needs with_index (a delta stores its own index)")
    out["parent"] = parent
    out["or_full"] = bool(args.get("or_full"))
