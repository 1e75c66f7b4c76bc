"""Unit tests of bmsnap_ironic against the REAL ironic package (Debian trixie's Ironic 29 in the
test chroot): run with ironic-step-py/tests/run-in-chroot.sh. Glance and the agent are mocked
here; test/e2e/ironic-snapshot.test.ts runs the same code against a real conductor and Glance."""

import inspect
import os
import stat
import tempfile
import unittest
from unittest import mock

from ironic.common import exception
from ironic.common import states

from bmsnap_ironic import args as step_args
from bmsnap_ironic import deploy
from bmsnap_ironic import fake_boot
from bmsnap_ironic import hardware
from bmsnap_ironic import safe_agent_client


class ArgsTest(unittest.TestCase):
    def test_defaults(self):
        self.assertEqual(step_args.validate({}), {"visibility": "private", "disk_format": "qcow2",
                                                  "compression": "zstd", "properties": {},
                                                  "with_index": True})

    def test_all(self):
        out = step_args.validate({"image_name": "x", "visibility": "shared", "disk_format": "raw",
                                  "compression": "none", "properties": {"a:b": "c"},
                                  "root_device_hints": {"name": "/dev/sda"}})
        self.assertEqual(out["root_device_hints"], {"name": "/dev/sda"})
        self.assertEqual(out["properties"], {"a:b": "c"})

    def test_rejects(self):
        for bad, msg in (({"nope": 1}, "unknown argument"),
                         ({"image_name": " "}, "image_name"),
                         ({"visibility": "everyone"}, "visibility"),
                         ({"disk_format": "vmdk"}, "disk_format"),
                         ({"properties": {"size": "1"}}, "not allowed"),
                         ({"properties": {"k": 1}}, "must be a string"),
                         ({"root_device_hints": {}}, "non-empty"),
                         ({"root_device_hints": {"hctl": "0:0:0:0"}}, "unsupported")):
            with self.assertRaisesRegex(exception.InvalidParameterValue, msg):
                step_args.validate(bad)


class HardwareTest(unittest.TestCase):
    def test_fake_hardware_interfaces(self):
        hw = hardware.BmsnapFakeHardware()
        self.assertIs(hw.supported_deploy_interfaces[0], deploy.BmsnapDeploy)
        self.assertIs(hw.supported_boot_interfaces[0], fake_boot.RecordingFakeBoot)

    def test_real_types_keep_stock_interfaces(self):
        from ironic.drivers import ipmi
        stock = ipmi.IPMIHardware().supported_deploy_interfaces
        self.assertEqual(hardware.BmsnapIPMIHardware().supported_deploy_interfaces,
                         [deploy.BmsnapDeploy] + list(stock))


class StepDeclarationTest(unittest.TestCase):
    def test_snapshot_is_a_service_step(self):
        d = deploy.BmsnapDeploy()
        steps = [s for s in d.service_steps if s["step"] == "snapshot"]
        self.assertEqual(len(steps), 1)
        self.assertEqual(steps[0]["interface"], "deploy")
        self.assertTrue(steps[0]["abortable"])
        self.assertTrue(steps[0]["requires_ramdisk"])
        self.assertEqual(set(steps[0]["argsinfo"]), set(step_args.ARGSINFO))

    def test_cleanup_periodic_is_registered(self):
        fn = deploy.BmsnapDeploy._cleanup_aborted_snapshots
        self.assertTrue(getattr(fn, "_is_periodic", False))
        self.assertEqual(fn._periodic_spacing, 10)


class FakeBootTest(unittest.TestCase):
    def test_writes_and_removes_cmdline(self):
        with tempfile.TemporaryDirectory() as d:
            fake_boot.CONF.set_override("fake_boot_dir", d, group="bmsnap")
            self.addCleanup(fake_boot.CONF.clear_override, "fake_boot_dir", group="bmsnap")
            task = mock.Mock()
            task.node.uuid = "u1"
            boot = fake_boot.RecordingFakeBoot()
            boot.prepare_ramdisk(task, {"ipa-node-uuid": "u1", "ipa-agent-token": "t0k",
                                        "ipa-api-url": "http://x"})
            path = os.path.join(d, "u1.cmdline")
            with open(path) as f:
                self.assertEqual(f.read(), "ipa-agent-token=t0k ipa-api-url=http://x ipa-node-uuid=u1\n")
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
            boot.clean_up_ramdisk(task)
            self.assertFalse(os.path.exists(path))
            boot.clean_up_ramdisk(task)   # idempotent


def _task(provision_state, info, last_error=None):
    task = mock.Mock()
    node = task.node
    node.uuid = "u1"
    node.provision_state = provision_state
    node.last_error = last_error
    node.driver_internal_info = {deploy.INFO: dict(info)} if info is not None else {}

    def set_dii(k, v):
        node.driver_internal_info[k] = v
    node.set_driver_internal_info.side_effect = set_dii
    return task


class AgentGoneTest(unittest.TestCase):
    """The agent dies between its heartbeat and the conductor's status request: a real refused
    connection (a port nothing listens on), not a mock."""

    TOKEN = "agent-token-7f3c9a1e5b2d4c6e8f0a1b3c5d7e9f11"

    def setUp(self):
        import socket
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()   # now nothing listens there
        self.task = _task(states.SERVICEWAIT, {"image_id": "i1", "state": "uploading"})
        node = self.task.node
        node.service_step = {"interface": "deploy", "step": "snapshot"}
        node.driver_internal_info.update({"agent_url": "http://127.0.0.1:%d" % self.port,
                                          "agent_secret_token": self.TOKEN})
        node.driver_info = {}
        # get_client(task) returns the task's cached client: give it Ironic's real one
        from ironic.drivers.modules import agent_client
        self.task.cached_agent_client = agent_client.AgentClient()

    def test_ironic_client_would_leak_the_token(self):
        # why the plugin asks itself: Ironic 29's own error text carries the URL with the token
        from ironic.drivers.modules import agent_client
        with self.assertLogs(level="DEBUG"):
            with self.assertRaises(exception.AgentConnectionFailed) as ctx:
                agent_client.get_client(self.task).get_commands_status(
                    self.task.node, retry_connection=False)
        self.assertIn(self.TOKEN, str(ctx.exception))

    def test_unreachable_agent_waits_quietly(self):
        d = deploy.BmsnapDeploy()
        with mock.patch("ironic.drivers.modules.agent.AgentDeploy.process_next_step") as sup:
            with self.assertLogs(level="DEBUG") as logs:
                self.assertIsNone(d.process_next_step(self.task, "service"))
        sup.assert_not_called()
        text = "\n".join(logs.output)
        self.assertIn("did not answer the command status request (AgentConnectionFailed)", text)
        self.assertNotIn(self.TOKEN, text)
        self.assertEqual(self.task.node.driver_internal_info[deploy.INFO]["state"], "uploading")

    def test_safe_client_masks_the_token_in_errors_and_logs(self):
        client = safe_agent_client.install(self.task)
        self.assertIs(agent_client_module().get_client(self.task), client)
        with self.assertLogs(level="DEBUG") as logs:
            with self.assertRaises(exception.AgentConnectionFailed) as ctx:
                client.get_commands_status(self.task.node, retry_connection=False)
            with self.assertRaises(exception.AgentConnectionFailed) as cmd:
                client._command(node=self.task.node, method="service.execute_service_step",
                                params={})
        for text in (str(ctx.exception), str(cmd.exception), "\n".join(logs.output)):
            self.assertNotIn(self.TOKEN, text)
            self.assertIn("agent_token=***", text)   # masked in place, the rest of the text kept
        self.assertIsNone(ctx.exception.__cause__)

    def test_agent_dying_between_heartbeat_answers_is_no_failure(self):
        # A real agent-like HTTP server answers the status request once, then is gone: Ironic's
        # step handling must use that answer, not ask again (the second request would fail).
        import http.server
        import json
        import threading
        seen = []

        class Once(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                seen.append(self.path)
                body = json.dumps({"commands": [{
                    "command_name": "execute_service_step", "command_status": "RUNNING",
                    "command_result": {"progress": {"bytes": 1}}, "command_error": None}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        server = http.server.HTTPServer(("127.0.0.1", 0), Once)
        node = self.task.node
        node.driver_internal_info["agent_url"] = "http://127.0.0.1:%d" % server.server_port
        node.service_step = {"interface": "deploy", "step": "snapshot", "abortable": True}
        serving = threading.Thread(target=server.handle_request)
        serving.start()
        try:
            result = deploy.BmsnapDeploy().process_next_step(self.task, "service")
        finally:
            serving.join(5)
            server.server_close()
        self.assertIsNone(result)
        self.assertEqual(len(seen), 1, "one status request per heartbeat")
        self.assertNotIn(self.TOKEN, seen[0].replace("agent_token=" + self.TOKEN, ""))
        self.assertEqual(node.driver_internal_info[deploy.INFO]["progress"], {"bytes": 1})


def agent_client_module():
    from ironic.drivers.modules import agent_client
    return agent_client


class CleanupAndVerifyTest(unittest.TestCase):
    def setUp(self):
        p = mock.patch.object(deploy, "GlanceImages")
        self.glance = p.start().return_value
        self.addCleanup(p.stop)
        self.d = deploy.BmsnapDeploy()
        # the undecorated method (the periodic wrapper iterates nodes itself)
        self.cleanup = inspect.unwrap(deploy.BmsnapDeploy._cleanup_aborted_snapshots)

    def test_aborted_upload_is_deleted(self):
        task = _task(states.SERVICEFAIL, {"image_id": "i1", "state": "uploading"})
        self.cleanup(self.d, task, None, None)
        self.glance.delete.assert_called_once_with("i1")
        self.assertEqual(task.node.driver_internal_info[deploy.INFO]["state"], "deleted")
        self.assertEqual(task.node.last_error, "Snapshot aborted: its image i1 was deleted")

    def test_delete_failure_is_reported(self):
        self.glance.delete.side_effect = RuntimeError("down")
        task = _task(states.SERVICEFAIL, {"image_id": "i1", "state": "uploading"})
        self.cleanup(self.d, task, None, None)
        self.assertEqual(task.node.driver_internal_info[deploy.INFO]["state"], "orphaned")
        self.assertIn("could not be deleted", task.node.last_error)

    def test_existing_last_error_is_kept(self):
        task = _task(states.SERVICEFAIL, {"image_id": "i1", "state": "uploading"}, last_error="boom")
        self.cleanup(self.d, task, None, None)
        self.assertEqual(task.node.last_error, "boom")

    def test_orphaned_image_is_deleted_once_glance_answers(self):
        # a failure whose delete failed (Glance down during the upload): retried, error kept
        self.glance.delete.side_effect = [RuntimeError("down"), None]
        task = _task(states.SERVICEFAIL, {"image_id": "i1", "state": "orphaned"},
                     last_error="Service step deploy.snapshot failed ...")
        self.cleanup(self.d, task, None, None)
        self.assertEqual(task.node.driver_internal_info[deploy.INFO]["state"], "orphaned")
        self.cleanup(self.d, task, None, None)
        self.assertEqual(self.glance.delete.call_count, 2)
        self.assertEqual(task.node.driver_internal_info[deploy.INFO]["state"], "deleted")
        self.assertEqual(task.node.last_error, "Service step deploy.snapshot failed ...")

    def test_periodic_predicate(self):
        for st, want in (("uploading", True), ("orphaned", True), ("deleted", False),
                         ("active", False), (None, False)):
            node = mock.Mock(driver_internal_info={deploy.INFO: {"state": st}})
            self.assertEqual(deploy._needs_cleanup(node), want, st)
        self.assertFalse(deploy._needs_cleanup(mock.Mock(driver_internal_info={})))

    def test_other_states_untouched(self):
        for st, info in ((states.SERVICEWAIT, {"image_id": "i1", "state": "uploading"}),
                         (states.SERVICEFAIL, {"image_id": "i1", "state": "active"}),
                         (states.SERVICEFAIL, None)):
            self.cleanup(self.d, _task(st, info), None, None)
        self.glance.delete.assert_not_called()

    def test_verify_mismatch_fails_and_deletes(self):
        self.glance.get.return_value = {"status": "active", "size": 10, "checksum": "m",
                                        "os_hash_value": "s"}
        task = _task(states.SERVICEWAIT, {"image_id": "i1", "state": "uploading"})
        with self.assertRaisesRegex(exception.NodeServicingFailure, "size 10 != 11"):
            self.d._verify(task, "i1", {"size": 11, "checksum": "m", "os_hash_value": "s"})
        self.glance.delete.assert_called_once_with("i1")

    def test_verify_match(self):
        self.glance.get.return_value = {"status": "active", "size": 10, "checksum": "m",
                                        "os_hash_value": "s"}
        task = _task(states.SERVICEWAIT, {"image_id": "i1", "state": "uploading"})
        self.d._verify(task, "i1", {"size": 10, "checksum": "m", "os_hash_value": "s"})
        self.glance.delete.assert_not_called()


class GlanceImagesTest(unittest.TestCase):
    def setUp(self):
        from bmsnap_ironic import glance
        self.glance = glance
        for name, value in (("get_auth", mock.Mock()), ("get_session", mock.Mock()),
                            ("get_endpoint", mock.Mock(return_value="http://g:9292/v2/"))):
            p = mock.patch.object(glance.keystone, name, value)
            p.start()
            self.addCleanup(p.stop)

    def test_endpoint_without_version(self):
        self.assertEqual(self.glance.GlanceImages().endpoint, "http://g:9292")

    def test_upload_credential_without_auth(self):
        g = self.glance.GlanceImages()
        g._session.get_user_id.side_effect = RuntimeError("noauth has no user")
        self.assertEqual(g.upload_credential("img"), (None, None))

    def test_upload_credential_conductor_token_when_configured(self):
        g = self.glance.GlanceImages()
        g._session.get_user_id.return_value = "u1"
        g._session.get_token.return_value = "conductor-token"
        self.glance.CONF.set_override("upload_credential", "conductor_token", group="bmsnap")
        self.addCleanup(self.glance.CONF.clear_override, "upload_credential", group="bmsnap")
        self.assertEqual(g.upload_credential("img"), ("conductor-token", None))
        g._session.post.assert_not_called()

    def test_upload_credential_refused_is_one_line(self):
        g = self.glance.GlanceImages()
        g._session.get_user_id.return_value = "u1"
        g._session.get_endpoint.return_value = "http://ks:5000"
        g._session.post.return_value = mock.Mock(status_code=403)
        with self.assertRaises(self.glance.SnapshotImageError) as cm:
            g.upload_credential("img")
        self.assertIn("creating the upload credential for image img: Keystone answered 403", str(cm.exception))
        url = g._session.post.call_args[0][0]
        self.assertEqual(url, "http://ks:5000/v3/users/u1/application_credentials")
        rules = g._session.post.call_args[1]["json"]["application_credential"]["access_rules"]
        self.assertEqual(sorted((r["method"], r["path"]) for r in rules),
                         [("GET", "/v2/images/img"), ("PATCH", "/v2/images/img"),
                          ("PUT", "/v2/images/img/file")])

    def test_unreachable_glance_is_one_line(self):
        from keystoneauth1 import exceptions as ks_exc
        g = self.glance.GlanceImages()
        g._session.request.side_effect = ks_exc.ConnectFailure("HTTPConnectionPool(...) refused")
        with self.assertRaises(self.glance.SnapshotImageError) as cm:
            g.create("n", "qcow2", "private", None, {})
        self.assertEqual(str(cm.exception),
                         "creating image n: cannot connect to Glance at http://g:9292 (ConnectFailure)")

    def test_delete_404_is_fine(self):
        g = self.glance.GlanceImages()
        g._session.request.return_value = mock.Mock(status_code=404)
        g.delete("i1")
        g._session.request.return_value = mock.Mock(status_code=500)
        with self.assertRaisesRegex(self.glance.SnapshotImageError, "Glance answered 500"):
            g.delete("i1")


if __name__ == "__main__":
    unittest.main()
