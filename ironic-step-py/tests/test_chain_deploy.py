"""The conductor side of deploying a bmsnap image (chain_deploy): the step it overrides, the
chain it resolves, the credential's rules, and how a finished write is followed."""

import unittest
from unittest import mock

from ironic.common import exception
from ironic.common import states

from bmsnap_ironic import chain_deploy
from bmsnap_ironic import deploy
from bmsnap_ironic import hardware


class Images(object):
    """GlanceImages over a dict of images (find: None when absent)."""

    def __init__(self, images):
        self.images = images
        self.deleted_credentials = []

    def find(self, image_id):
        return self.images.get(image_id)

    def delete_upload_credential(self, cred_id):
        self.deleted_credentials.append(cred_id)
        return True


def _task(info=None):
    task = mock.Mock()
    node = task.node
    node.uuid = "u1"
    node.driver_internal_info = {chain_deploy.INFO: dict(info)} if info else {}

    def set_dii(k, v):
        node.driver_internal_info[k] = v
    node.set_driver_internal_info.side_effect = set_dii
    return task


def _commands(status, chain=None):
    result = {"deploy_result": {"chain": chain, "bytesWritten": 5, "device": "/dev/sda"},
              "deploy_step": {"interface": "deploy", "step": "write_image"}} if chain else None
    return [{"command_name": "get_deploy_steps", "command_status": "SUCCEEDED"},
            {"command_name": "execute_deploy_step", "command_status": status, "command_result": result}]


class DeclarationTest(unittest.TestCase):
    def test_write_image_stays_the_priority_80_deploy_step(self):
        steps = {s["step"]: s for s in deploy.BmsnapDeploy().deploy_steps}
        self.assertEqual(steps["write_image"]["priority"], 80)
        self.assertEqual(steps["write_image"]["interface"], "deploy")

    def test_fake_hardware_takes_noop_management(self):
        from ironic.drivers.modules import noop_mgmt
        self.assertIn(noop_mgmt.NoopManagement, hardware.BmsnapFakeHardware().supported_management_interfaces)


class ChainTest(unittest.TestCase):
    def test_follows_parents_to_the_full_image(self):
        images = Images({"p": {"id": "p", "status": "active", "bmsnap_parent_image": "g"},
                         "g": {"id": "g", "status": "active"}})
        self.assertEqual(chain_deploy._chain(images, {"id": "d", "bmsnap_parent_image": "p"}), ["d", "p", "g"])

    def test_a_missing_or_inactive_parent_fails_before_anything_is_written(self):
        with self.assertRaisesRegex(exception.InstanceDeployFailure, "delta on image p, which is gone"):
            chain_deploy._chain(Images({}), {"id": "d", "bmsnap_parent_image": "p"})
        with self.assertRaisesRegex(exception.InstanceDeployFailure, "which is queued"):
            chain_deploy._chain(Images({"p": {"id": "p", "status": "queued"}}), {"id": "d", "bmsnap_parent_image": "p"})

    def test_a_loop_is_refused(self):
        images = Images({"p": {"id": "p", "status": "active", "bmsnap_parent_image": "d"}})
        with self.assertRaisesRegex(exception.InstanceDeployFailure, "loops"):
            chain_deploy._chain(images, {"id": "d", "bmsnap_parent_image": "p"})

    def test_read_rules_cover_the_chain_and_the_top_index_only(self):
        rules = chain_deploy._read_rules({"id": "d", "bmsnap_index_image": "i"}, ["d", "p"])
        self.assertEqual(sorted(rules), sorted([
            ("GET", "/v2/images/d"), ("GET", "/v2/images/d/file"),
            ("GET", "/v2/images/p"), ("GET", "/v2/images/p/file"), ("GET", "/v2/images/i/file")]))
        self.assertFalse([m for m, _ in rules if m != "GET"], "read-only")


class BmsnapImageTest(unittest.TestCase):
    def test_non_glance_sources_go_the_stock_way(self):
        task = _task()
        task.node.instance_info = {"image_source": "http://127.0.0.1/x.qcow2"}
        self.assertIsNone(chain_deploy.bmsnap_image(task))


class FollowWriteTest(unittest.TestCase):
    def setUp(self):
        self.images = Images({})
        patcher = mock.patch.object(chain_deploy, "GlanceImages", return_value=self.images)
        patcher.start()
        self.addCleanup(patcher.stop)

    def _writing(self):
        return _task({"image_id": "d", "chain": ["d", "p"], "state": "writing", "credential": "c1"})

    def test_running_changes_nothing(self):
        task = self._writing()
        self.assertTrue(chain_deploy.follow_write(task, _commands("RUNNING")))
        self.assertEqual(task.node.driver_internal_info[chain_deploy.INFO]["state"], "writing")
        self.assertEqual(self.images.deleted_credentials, [])

    def test_success_records_the_write_and_revokes_the_credential(self):
        task = self._writing()
        self.assertTrue(chain_deploy.follow_write(task, _commands("SUCCEEDED", ["d", "p"])))
        info = task.node.driver_internal_info[chain_deploy.INFO]
        self.assertEqual(info["state"], "written")
        self.assertEqual(info["bytesWritten"], 5)
        self.assertNotIn("credential", info)
        self.assertEqual(self.images.deleted_credentials, ["c1"])

    @mock.patch.object(chain_deploy.manager_utils, "deploying_error_handler", autospec=True)
    def test_another_chain_fails_the_deploy(self, handler):
        task = self._writing()
        self.assertFalse(chain_deploy.follow_write(task, _commands("SUCCEEDED", ["d", "x"])))
        handler.assert_called_once()
        self.assertIn("not ['d', 'p']", handler.call_args[0][1])

    def test_failure_revokes_too(self):
        task = self._writing()
        self.assertTrue(chain_deploy.follow_write(task, _commands("FAILED")))
        self.assertEqual(task.node.driver_internal_info[chain_deploy.INFO]["state"], "failed")
        self.assertEqual(self.images.deleted_credentials, ["c1"])

    def test_not_writing_is_left_alone(self):
        task = _task({"state": "written"})
        self.assertTrue(chain_deploy.follow_write(task, _commands("FAILED")))
        self.assertEqual(task.node.driver_internal_info[chain_deploy.INFO]["state"], "written")

    def test_start_write_returns_deploy_wait_and_keeps_the_token_in_the_command_only(self):
        task = _task()
        task.node.as_dict.return_value = {"uuid": "u1"}
        task.ports = []
        images = mock.Mock(agent_endpoint="http://glance", find=Images({}).find)
        images.access_credential.return_value = ("s3cret-token", "c9")
        client = mock.Mock()
        with mock.patch.object(chain_deploy, "GlanceImages", return_value=images), \
                mock.patch.object(chain_deploy.safe_agent_client, "install", return_value=client):
            state = chain_deploy.start_write(task, {"id": "d", "bmsnap_index_image": "i", "disk_format": "qcow2"})
        self.assertEqual(state, states.DEPLOYWAIT)
        params = client._command.call_args[1]["params"]
        self.assertEqual(client._command.call_args[1]["method"], "deploy.execute_deploy_step")
        self.assertEqual(params["bmsnap"], {"glance_url": "http://glance", "token": "s3cret-token", "image_id": "d"})
        self.assertNotIn("s3cret-token", repr(params["step"]))
        self.assertNotIn("s3cret-token", repr(task.node.driver_internal_info))
        self.assertEqual(task.node.driver_internal_info[chain_deploy.INFO]["credential"], "c9")


if __name__ == "__main__":
    unittest.main()
