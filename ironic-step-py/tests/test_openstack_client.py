"""The client side (bmsnap_openstack): argument checks, how service answers become one-line
errors, and how a node's servicing is followed to its end. The paths the real stack cannot be
made to take on cue (a timeout, a failure whose last_error comes late, a node taken over by
something else) are driven here by a scripted sequence of node reads; test/e2e/openstack-cli.test.ts
runs the whole thing against Ironic 29 + Glance 30 + Keystone."""

import io
import json
import unittest
import unittest.mock

from bmsnap_openstack import api, errors, follow, http, ironic_nodes
from bmsnap_openstack.osc import progress_line, snapshot_command


PARENT = "0c1d5e8a-3f2b-4a6c-9e7d-1b2c3d4e5f60"


class StepArgsTest(unittest.TestCase):
    def test_minimal_and_full(self):
        self.assertEqual(api.snapshot_step("n", "img"),
                         {"interface": "deploy", "step": "snapshot", "args": {"image_name": "img"}})
        step = api.snapshot_step("n", "img", visibility="shared", disk_format="raw", compression="zlib",
                                 properties={"a": "1"}, root_device_hints={"name": "/dev/sda"},
                                 scrub="default,ssh-userdir", scrub_paths=["/opt/x"])
        self.assertEqual(step["args"], {"image_name": "img", "visibility": "shared", "disk_format": "raw",
                                        "compression": "zlib", "properties": {"a": "1"},
                                        "root_device_hints": {"name": "/dev/sda"},
                                        "scrub": "default,ssh-userdir", "scrub_paths": ["/opt/x"]})

    def test_bad_arguments_are_usage_errors(self):
        for args, kwargs, want in (
                (("", "img"), {}, "missing NODE_OR_SERVER"),
                (("n", " "), {}, "missing the image name"),
                (("n", "x" * 256), {}, "at most 255"),
                (("n", "img"), {"visibility": "everyone"}, "visibility must be one of private, shared"),
                (("n", "img"), {"compression": "lz4"}, "compression must be one of"),
                (("n", "img"), {"properties": ["a=1"]}, "properties must be an object"),
                (("n", "img"), {"properties": {"owner": "me"}}, "property name 'owner' is not allowed"),
                (("n", "img"), {"root_device_hints": {"colour": "red"}}, "unsupported root device hint(s) colour"),
                (("n", "img"), {"scrub": "Default!"}, "scrub must be true or a comma list"),
                (("n", "img"), {"scrub_paths": ["/x"]}, "scrub_paths needs scrub"),
                (("n", "img"), {"or_full": True}, "or_full goes with parent"),
                (("n", "img"), {"parent": "yesterday"}, "parent must be a Glance image id"),
                (("n", "img"), {"parent": PARENT, "with_index": False}, "parent needs with_index"),
                (("n", "img"), {"parent": PARENT, "disk_format": "raw"}, "parent needs disk_format qcow2"),
                (("n", "img"), {"with_index": "no"}, "with_index must be true or false"),
                (("n", "img"), {"parent": PARENT, "or_full": 1}, "or_full must be true or false")):
            with self.assertRaises(errors.UsageError) as cm:
                api.snapshot_step(*args, **kwargs)
            self.assertIn(want, str(cm.exception))
            self.assertNotIn("\n", str(cm.exception))

    def test_incremental(self):
        # the defaults stay the step's (with_index: true for qcow2 only), so raw needs nothing
        self.assertEqual(api.snapshot_step("n", "img", disk_format="raw", or_full=False, with_index=True)["args"],
                         {"image_name": "img", "disk_format": "raw"})
        self.assertEqual(api.snapshot_step("n", "img", parent=PARENT, or_full=True)["args"],
                         {"image_name": "img", "parent": PARENT, "or_full": True})
        self.assertEqual(api.snapshot_step("n", "img", disk_format="raw", with_index=False)["args"],
                         {"image_name": "img", "disk_format": "raw", "with_index": False})

    def test_nothing_is_contacted_for_bad_arguments(self):
        conn = unittest.mock.Mock()
        with self.assertRaises(errors.UsageError):
            api.start_snapshot(conn, "n", "img", or_full=True)
        self.assertEqual(conn.mock_calls, [])

    def test_wait_shows_a_delta_and_logs_warnings(self):
        conn = unittest.mock.Mock()
        conn.image.get_image.side_effect = api.sdk_exc.ForbiddenException("system scope")
        record = {"image_id": "i", "image_name": "img", "state": "active", "size": 5, "parent_image_id": PARENT,
                  "delta": {"changed_clusters": 2}, "warnings": ["parent could not be protected"]}
        started = api.Started("u", "n", None, None, "img", None)
        with unittest.mock.patch.object(api, "follow_snapshot", return_value=record), \
                self.assertLogs("bmsnap_openstack", "WARNING") as logs:
            image = api.wait_for_snapshot(conn, started)
        self.assertEqual((image.id, image.properties), ("i", {"bmsnap_parent_image": PARENT}))
        self.assertEqual(logs.output, ["WARNING:bmsnap_openstack:snapshot i of node n: parent could not be protected"])

    def test_timeout_bounds(self):
        api.check_timeout(None)
        api.check_timeout(0)
        api.check_timeout(3600.5)
        for bad in (-1, api.MAX_TIMEOUT + 1, "10", "x"):
            with self.assertRaises(errors.UsageError):
                api.check_timeout(bad)

    def test_node_checks(self):
        ok = {"uuid": "u", "name": "n", "provision_state": "active", "target_provision_state": None,
              "deploy_interface": "bmsnap"}
        api.check_node(ok)
        for change, want in (({"provision_state": "available"}, 'node n (u) is "available"'),
                             ({"target_provision_state": "service"}, 'busy ("active" -> "service")'),
                             ({"deploy_interface": "direct"}, 'uses deploy interface "direct"')):
            with self.assertRaises(errors.SnapshotFailedError) as cm:
                api.check_node(dict(ok, **change))
            self.assertIn(want, str(cm.exception))
            self.assertEqual(cm.exception.node, "u")


class AnswersTest(unittest.TestCase):
    def test_ironic_faultstring_inside_error_message(self):
        body = json.dumps({"error_message": json.dumps({"faultstring": "Node x could not\nbe found.",
                                                        "debuginfo": None})})
        self.assertEqual(http.answered("Ironic", 404, body), "Ironic answered 404: Node x could not be found.")

    def test_nova_and_keystone_shapes(self):
        self.assertEqual(http.answered("Nova", 404, '{"itemNotFound": {"message": "no server", "code": 404}}'),
                         "Nova answered 404: no server")
        self.assertEqual(http.answered("Glance", 403, '{"error": {"message": "denied"}}'),
                         "Glance answered 403: denied")
        self.assertEqual(http.answered("Glance", 500, "<html><body><h1>500 Internal</h1>\n oops</body></html>"),
                         "Glance answered 500: 500 Internal oops")
        self.assertEqual(http.answered("Ironic", 502, "[1, 2]"), "Ironic answered 502")

    def test_401_never_echoes_the_body(self):
        msg = http.answered("Ironic", 401, '{"message": "token gAAAAAsecret is bad"}')
        self.assertNotIn("gAAAAA", msg)
        self.assertIn("401 Unauthorized", msg)

    def test_check(self):
        class Resp:
            status_code, text = 409, '{"error_message": "{\\"faultstring\\": \\"Node is locked\\"}"}'
        with self.assertRaises(errors.ApiError) as cm:
            http.check(Resp(), "Ironic", "starting the snapshot on node u", ok=(202,))
        self.assertEqual(str(cm.exception), "starting the snapshot on node u: Ironic answered 409: Node is locked")
        self.assertEqual(cm.exception.status, 409)


class ScriptedNodes:
    """get_node() answers with the next node of SCRIPT (the last one again once it runs out)."""

    def __init__(self, script):
        self.script, self.reads = list(script), 0

    def get_node(self, uuid):
        self.reads += 1
        return self.script.pop(0) if len(self.script) > 1 else self.script[0]


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, s):
        self.now += s


def node(provision_state, target=None, reservation=None, last_error=None, **snap):
    return {"uuid": "u", "name": "n", "provision_state": provision_state, "target_provision_state": target,
            "reservation": reservation, "last_error": last_error,
            "driver_internal_info": {"bmsnap_snapshot": snap} if snap else {}}


class FollowTest(unittest.TestCase):
    def follow(self, script, **kw):
        clock = Clock()
        seen = []
        nodes = ScriptedNodes(script)
        try:
            return follow.follow_snapshot(nodes, "u", clock=clock, sleep=clock.sleep, on_progress=seen.append,
                                          **kw), seen, nodes
        finally:
            self.clock = clock

    def test_success_with_progress(self):
        info, seen, _ = self.follow([
            node("active", "service", "c1"),
            node("servicing", "active", "c1"),
            node("service wait", "active", state="uploading", image_id="new",
                 progress={"phase": "copy", "bytes": 10, "total": 100, "percent": 10, "mb_per_s": 5}),
            node("service wait", "active", state="uploading", image_id="new",
                 progress={"phase": "copy", "bytes": 10, "total": 100, "percent": 10, "mb_per_s": 5}),
            node("active", state="active", image_id="new", image_name="img"),
        ], previous_image_id="old")
        self.assertEqual(info["image_id"], "new")
        self.assertEqual([p.provision_state for p in seen], ["active", "servicing", "service wait", "active"],
                         "on_progress only on a change")
        self.assertEqual(seen[2].percent, 10)

    def test_still_active_with_the_previous_image_is_not_done(self):
        # Ironic has not started servicing yet: the old snapshot record must not count
        info, _, nodes = self.follow([
            node("active", state="active", image_id="old"),
            node("servicing", "active", "c1"),
            node("active", state="active", image_id="new"),
        ], previous_image_id="old")
        self.assertEqual(info["image_id"], "new")
        self.assertEqual(nodes.reads, 3)

    def test_failure_waits_for_last_error(self):
        with self.assertRaises(errors.SnapshotFailedError) as cm:
            self.follow([node("servicing", "active", "c1"),
                         node("service failed", "active"),
                         node("service failed", "active"),
                         node("service failed", "active", last_error="Service step failed:\nno disk matches")])
        self.assertEqual(str(cm.exception), "snapshot of node n (u) failed: Service step failed: no disk matches")
        self.assertEqual(cm.exception.last_error, "Service step failed:\nno disk matches")

    def test_failure_without_last_error_after_the_grace(self):
        with self.assertRaises(errors.SnapshotFailedError) as cm:
            self.follow([node("servicing", "active", "c1"), node("service failed", "active")])
        self.assertIn("Ironic recorded no last_error", str(cm.exception))
        self.assertGreater(self.clock.now, follow.LAST_ERROR_GRACE_S)

    def test_failed_but_still_locked_is_not_settled(self):
        info, _, _ = self.follow([node("service failed", "active", "c1"),
                                  node("active", state="active", image_id="new")])
        self.assertEqual(info["image_id"], "new", "a locked 'service failed' was a passing state")

    def test_other_state_means_someone_else_drives_it(self):
        with self.assertRaises(errors.SnapshotFailedError) as cm:
            self.follow([node("servicing", "active", "c1"), node("deleting", "available", "c1")])
        self.assertIn('went to "deleting" instead of servicing', str(cm.exception))

    def test_active_without_a_record(self):
        with self.assertRaises(errors.SnapshotFailedError) as cm:
            self.follow([node("servicing", "active", "c1"), node("active")])
        self.assertIn("recorded no snapshot image (bmsnap_snapshot state: none)", str(cm.exception))

    def test_timeout(self):
        with self.assertRaises(errors.WaitTimeoutError) as cm:
            self.follow([node("service wait", "active", state="uploading", image_id="new")],
                        timeout=30, poll_seconds=2)
        self.assertIn("timed out after 30 s", str(cm.exception))
        self.assertIn("the snapshot goes on", str(cm.exception))
        self.assertLessEqual(self.clock.now, 34)

    def test_node_gone(self):
        with self.assertRaises(errors.SnapshotFailedError) as cm:
            self.follow([None])
        self.assertIn("disappeared", str(cm.exception))


#: What Ironic 29's stock policy shows a member of the node's project (api/controllers/v1/node.py)
RESERVATION_HIDDEN = "** Redacted - requires baremetal:node:get:reservation permission. **"
LAST_ERROR_HIDDEN = "** Value Redacted - Requires baremetal:node:get:last_error permission. **"
DII_HIDDEN = {"content": "** Redacted - Requires baremetal:node:get:driver_internal_info permission. **"}


def member_view(n, *fields):
    """N as a project member sees it: FIELDS redacted, then through IronicNodes.get_node's unredact."""
    n = dict(n)
    for f in fields:
        n[f] = {"driver_internal_info": DII_HIDDEN, "last_error": LAST_ERROR_HIDDEN, "reservation": RESERVATION_HIDDEN}[f]
    return ironic_nodes.unredact(n)


class RedactedFieldsTest(unittest.TestCase):
    follow = FollowTest.follow

    def test_unredact(self):
        n = member_view(node("active", reservation="c1", last_error="x", state="active"), "reservation", "driver_internal_info")
        self.assertEqual((n["reservation"], n["driver_internal_info"], n["last_error"]), (None, {}, "x"))
        self.assertEqual(n["redacted"], ["reservation", "driver_internal_info"])
        self.assertEqual(ironic_nodes.unredact(node("active", reservation="c1"))["redacted"], [])

    def test_a_hidden_lock_is_not_a_held_one(self):
        # a member never sees reservation: following must still end (it hung before)
        info, _, _ = self.follow([member_view(node("servicing", "active", "c1"), "reservation"),
                                  member_view(node("active", state="active", image_id="new"), "reservation")])
        self.assertEqual(info["image_id"], "new")

    def test_hidden_last_error_and_record_say_so(self):
        with self.assertRaises(errors.SnapshotFailedError) as cm:
            self.follow([member_view(node("servicing", "active"), "last_error"),
                         member_view(node("service failed", "active", last_error="boom"), "last_error")])
        self.assertIn("policy hides last_error from your project", str(cm.exception))
        with self.assertRaises(errors.SnapshotFailedError) as cm:
            self.follow([member_view(node("servicing", "active"), "driver_internal_info"),
                         member_view(node("active", state="active", image_id="new"), "driver_internal_info")])
        self.assertIn("policy hides driver_internal_info", str(cm.exception))


class ProgressLineTest(unittest.TestCase):
    def progress(self, state, phase=None, **kw):
        fields = dict(bytes=None, total=None, percent=None, mb_per_s=None)
        fields.update(kw)
        return follow.Progress("u", state, phase, **fields)

    def test_describe(self):
        self.assertEqual(progress_line.human_bytes(512), "512 B")
        self.assertEqual(progress_line.human_bytes(3 * 1024 ** 3 // 2), "1.5 GiB")
        self.assertEqual(progress_line.describe(self.progress("service wait")), "")
        self.assertEqual(progress_line.describe(self.progress("service wait", "copy", bytes=1024 ** 3,
                                                              total=2 * 1024 ** 3, percent=50, mb_per_s=85)),
                         "copy 50% (1.0 GiB of 2.0 GiB, 85 MB/s)")

    def test_states_on_lines_and_no_live_line_off_a_terminal(self):
        out = io.StringIO()
        line = progress_line.ProgressLine(out, "n")
        line.update(self.progress("servicing"))
        line.update(self.progress("service wait", "copy", percent=5))
        line.update(self.progress("active"))
        line.done()
        self.assertEqual(out.getvalue(), "node n: servicing\nnode n: service wait\nnode n: active\n")

    def test_live_line_on_a_terminal(self):
        class Tty(io.StringIO):
            def isatty(self):
                return True
        out = Tty()
        line = progress_line.ProgressLine(out, "n")
        line.update(self.progress("service wait", "copy", percent=5))
        line.update(self.progress("active"))
        self.assertEqual(out.getvalue(), "node n: service wait\n\r\x1b[Kn: copy 5%\r\x1b[Knode n: active\n")


class CommandParserTest(unittest.TestCase):
    def parse(self, argv):
        cmd = snapshot_command.SnapshotNode(app=None, app_args=None)
        return cmd.get_parser("openstack baremetal node snapshot").parse_args(argv)

    def test_options(self):
        a = self.parse(["srv", "--name", "img", "--property", "a=1", "--property", "b=2", "--root-device",
                        "serial=X1", "--scrub", "--scrub-path", "/opt/x", "--wait", "--timeout", "600"])
        self.assertEqual((a.node_or_server, a.name, a.property, a.root_device, a.scrub, a.scrub_path, a.timeout),
                         ("srv", "img", {"a": "1", "b": "2"}, {"serial": "X1"}, True, ["/opt/x"], 600))

    def test_incremental_options(self):
        a = self.parse(["srv", "--name", "img", "--parent", PARENT, "--or-full"])
        self.assertEqual((a.parent, a.or_full, a.with_index), (PARENT, True, True))
        a = self.parse(["srv", "--name", "img", "--no-index"])
        self.assertEqual((a.parent, a.or_full, a.with_index), (None, False, False))

    def test_delta_columns(self):
        base = (("image_id",), ("i",))
        self.assertEqual(snapshot_command._with_delta(*base, {"image_id": "i"}), base)
        cols, vals = snapshot_command._with_delta(*base, {
            "parent_image_id": PARENT, "delta": {"changed_clusters": 25, "dropped_clusters": 1,
                                                 "unchanged_clusters": 600}})
        self.assertEqual(cols, ("image_id", "parent_image_id", "delta"))
        self.assertEqual(vals[1], PARENT)
        self.assertEqual(vals[2].machine_readable(),
                         {"changed_clusters": 25, "dropped_clusters": 1, "unchanged_clusters": 600})
        # or_full fell back to a full image: no parent, the warning says why
        cols, vals = snapshot_command._with_delta(*base, {"parent_image_id": None, "warnings": ["no index"]})
        self.assertEqual(cols, ("image_id", "warnings"))
        self.assertEqual(vals[1].machine_readable(), ["no index"])

    def test_bad_combination_is_one_line_before_anything(self):
        cmd = snapshot_command.SnapshotNode(app=unittest.mock.Mock(), app_args=None)
        args = cmd.get_parser("openstack baremetal node snapshot").parse_args(
            ["srv", "--name", "img", "--parent", PARENT, "--no-index"])
        with self.assertRaises(snapshot_command.exceptions.CommandError) as cm:
            cmd.take_action(args)
        self.assertEqual(str(cm.exception), "snapshot step: parent needs with_index (a delta stores its own index)")
        self.assertEqual(cmd.app.client_manager.sdk_connection.mock_calls, [])

    def test_bad_timeout(self):
        with self.assertRaises(SystemExit), unittest.mock.patch("sys.stderr", io.StringIO()) as err:
            self.parse(["srv", "--name", "img", "--wait", "--timeout", "0"])
        self.assertIn("must be a whole number of seconds", err.getvalue())


if __name__ == "__main__":
    unittest.main()
