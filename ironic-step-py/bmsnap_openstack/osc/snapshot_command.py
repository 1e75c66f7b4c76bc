"""``openstack baremetal node snapshot``: the CLI front of bmsnap_openstack.start_snapshot() /
wait_for_snapshot(); every check and request is theirs."""

import argparse
import time

from osc_lib.cli import format_columns, parseractions
from osc_lib.command import command
from osc_lib import exceptions

from bmsnap_ironic.step_args import COMPRESSIONS, DISK_FORMATS, VISIBILITIES
from bmsnap_openstack.api import MAX_TIMEOUT, start_snapshot, wait_for_record
from bmsnap_openstack.errors import BmsnapError
from bmsnap_openstack.osc.progress_line import ProgressLine

COLUMNS = ("image_id", "image_name", "node_uuid", "node_name", "server_id", "state", "size", "seconds")
#: With --wait, after COLUMNS: for a delta, its parent and the node's delta counts; any warnings
#: (e.g. --or-full took a full image).
DELTA_COLUMNS = ("parent_image_id", "delta")


def _timeout(text):
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 1 <= value <= MAX_TIMEOUT:
        raise argparse.ArgumentTypeError("must be a whole number of seconds from 1 to %d" % MAX_TIMEOUT)
    return value


class SnapshotNode(command.ShowOne):
    """Snapshot a bare metal node's disk into a new image (bmsnap snapshot service step)"""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument(
            "node_or_server", metavar="<node-or-server>",
            help="Node to snapshot (name or UUID), or the compute server (name or ID) on it")
        parser.add_argument(
            "--name", metavar="<image-name>", required=True,
            help="Name of the new image")
        parser.add_argument(
            "--visibility", metavar="<visibility>", choices=VISIBILITIES,
            help="Image visibility: %s (default: private)" % ", ".join(VISIBILITIES))
        parser.add_argument(
            "--property", metavar="<key=value>", action=parseractions.KeyValueAction, default={},
            help="Extra image property (repeat option to set multiple properties)")
        parser.add_argument(
            "--disk-format", metavar="<disk-format>", choices=DISK_FORMATS,
            help="Image disk format: %s (default: qcow2)" % ", ".join(DISK_FORMATS))
        parser.add_argument(
            "--compression", metavar="<compression>", choices=COMPRESSIONS,
            help="qcow2 compression: zstd (default; qemu 5.1 or later), zlib (any qemu) or none")
        parser.add_argument(
            "--root-device", metavar="<key=value>", action=parseractions.KeyValueAction, default={},
            help="Root device hint selecting the disk to capture (repeat option for several hints; "
                 "default: the node's root_device property)")
        parser.add_argument(
            "--scrub", action="store_true",
            help="Remove per-machine state (SSH host keys, machine-id, cloud-init state, logs, "
                 "histories, leases, temporary files) from the image, never from the disk")
        parser.add_argument(
            "--scrub-ops", metavar="<operations>",
            help="With --scrub: the scrub operations, comma-separated (e.g. default,ssh-userdir; "
                 "default: default)")
        parser.add_argument(
            "--scrub-path", metavar="<path>", action="append", default=[],
            help="With --scrub: an absolute path to remove from the image as well (repeat option "
                 "for several paths)")
        parser.add_argument(
            "--parent", metavar="<image-id>",
            help="Take a delta: only the clusters changed since this earlier snapshot of the disk "
                 "(a Glance image id; it needs its cluster index, see docs/incremental.md)")
        parser.add_argument(
            "--or-full", action="store_true",
            help="With --parent: if the parent has no usable index, take a full image instead of failing")
        parser.add_argument(
            "--no-index", dest="with_index", action="store_false",
            help="Store no cluster index beside the image (by default a qcow2 gets one, hidden, "
                 "for later deltas)")
        parser.add_argument(
            "--wait", action="store_true",
            help="Wait for the snapshot to finish, showing its progress, and show the image; "
                 "fail with the node's last error if the snapshot fails")
        parser.add_argument(
            "--timeout", metavar="<seconds>", type=_timeout,
            help="With --wait: stop waiting after <seconds> (the snapshot goes on)")
        return parser

    def take_action(self, parsed_args):
        if parsed_args.timeout is not None and not parsed_args.wait:
            raise exceptions.CommandError("--timeout applies to --wait only")
        if (parsed_args.scrub_path or parsed_args.scrub_ops) and not parsed_args.scrub:
            raise exceptions.CommandError("--scrub-ops and --scrub-path need --scrub")
        conn = self.app.client_manager.sdk_connection
        t0 = time.monotonic()
        started = None
        display = None
        try:
            started = start_snapshot(
                conn, parsed_args.node_or_server, parsed_args.name,
                visibility=parsed_args.visibility, disk_format=parsed_args.disk_format,
                compression=parsed_args.compression, properties=parsed_args.property,
                root_device_hints=parsed_args.root_device,
                scrub=(parsed_args.scrub_ops or True) if parsed_args.scrub else None,
                scrub_paths=parsed_args.scrub_path, parent=parsed_args.parent,
                or_full=parsed_args.or_full, with_index=parsed_args.with_index)
            image, info = None, {}
            if parsed_args.wait:
                display = ProgressLine(self.app.stderr, started.node_name or started.node_uuid)
                image, info = wait_for_record(conn, started, timeout=parsed_args.timeout,
                                              on_progress=display.update)
        except BmsnapError as e:
            raise exceptions.CommandError(str(e)) from None
        except KeyboardInterrupt:
            if started is None:
                raise exceptions.CommandError("interrupted") from None
            raise exceptions.CommandError("stopped waiting; the snapshot goes on on node %s" % started.node_uuid) from None
        finally:
            if display:
                display.done()
        values = (image.id if image else None, started.image_name, started.node_uuid, started.node_name,
                  started.server_id, "active" if image else "started", image.size if image else None,
                  round(time.monotonic() - t0, 1))
        return _with_delta(COLUMNS, values, info)


def _with_delta(columns, values, info):
    """COLUMNS / VALUES plus what the node recorded of a delta (bmsnap_snapshot: parent_image_id,
    delta counts) and its warnings, where there are any."""
    if info.get("parent_image_id"):
        columns += DELTA_COLUMNS
        values += (info["parent_image_id"], format_columns.DictColumn(info.get("delta") or {}))
    if info.get("warnings"):
        columns += ("warnings",)
        values += (format_columns.ListColumn(info["warnings"]),)
    return columns, values
