"""Incremental snapshots at the conductor: the step's arguments (parent, or_full, with_index),
validated before anything is created, and the conductor's parent check, access rules, index
verification and clean-up with Glance mocked (ironic-snapshot.test.ts runs them for real)."""

import unittest
from unittest import mock

from ironic.common import exception

from bmsnap_ironic import args as step_args

PARENT = "0b0c3f3e-6f1a-4c55-9d0e-3a7d1f2b9c11"


class IncrementalArgsTest(unittest.TestCase):
    def test_index_on_by_default_for_qcow2_only(self):
        self.assertIs(step_args.validate({})["with_index"], True)
        self.assertIs(step_args.validate({"disk_format": "raw"})["with_index"], False)
        self.assertIs(step_args.validate({"with_index": False})["with_index"], False)
        self.assertNotIn("parent", step_args.validate({}))

    def test_parent(self):
        out = step_args.validate({"parent": PARENT})
        self.assertEqual((out["parent"], out["or_full"], out["with_index"]), (PARENT, False, True))
        self.assertIs(step_args.validate({"parent": PARENT, "or_full": True})["or_full"], True)

    def test_bad_values(self):
        for bad, msg in (({"parent": "../images"}, "parent must be a Glance image id"),
                         ({"parent": 7}, "parent must be a Glance image id"),
                         ({"parent": PARENT, "disk_format": "raw"}, "parent needs disk_format qcow2"),
                         ({"parent": PARENT, "with_index": False}, "parent needs with_index"),
                         ({"or_full": True}, "or_full goes with parent"),
                         ({"parent": PARENT, "or_full": "yes"}, "or_full must be true or false"),
                         ({"with_index": "no"}, "with_index must be true or false"),
                         ({"with_index": True, "disk_format": "raw"}, "with_index needs disk_format qcow2")):
            with self.assertRaisesRegex(exception.InvalidParameterValue, "^snapshot step: " + msg,
                                        msg=repr(bad)):
                step_args.validate(bad)

    def test_declared(self):
        for k in ("parent", "or_full", "with_index"):
            self.assertIn(k, step_args.ARGSINFO)


class ConductorSideTest(unittest.TestCase):
    """The conductor's parent check, access rules and clean-up (Glance mocked; the e2e runs them
    against a real one)."""

    def setUp(self):
        from bmsnap_ironic import deploy, incremental
        self.deploy, self.incremental = deploy, incremental
        self.images = mock.Mock()

    def parent(self, **over):
        p = {"id": PARENT, "status": "active", "owner": "p1", "bmsnap_index_image": "idx",
             "bmsnap_index_sha256": "a" * 64}
        p.update(over)
        self.images.find.side_effect = lambda i: p if i == PARENT else {"id": "idx", "status": "active"}

    def test_usable_parent(self):
        self.parent()
        self.assertEqual(self.incremental.check_parent(self.images, PARENT, "p1"), (PARENT, "idx"))

    def test_refusals_are_one_line(self):
        for over, owner, cls, msg in (
                ({"bmsnap_index_sha256": None}, "p1", "NoUsableIndex", "has no bmsnap cluster index"),
                ({"status": "queued"}, "p1", "NoUsableIndex", "is queued, not active"),
                ({}, "p2", "SnapshotImageError", "belongs to another project")):
            self.parent(**over)
            with self.assertRaisesRegex(getattr(self.incremental, cls), "^parent image %s %s" % (PARENT, msg)):
                self.incremental.check_parent(self.images, PARENT, owner)
        self.images.find.side_effect = lambda i: None
        with self.assertRaisesRegex(self.incremental.SnapshotImageError, "does not exist$"):
            self.incremental.check_parent(self.images, PARENT, "p1")

    def test_or_full_falls_back_only_from_a_missing_index(self):
        self.parent(bmsnap_index_image=None)
        args = {"parent": PARENT, "or_full": True}
        parent, warning = self.deploy._usable_parent(self.images, args, "p1")
        self.assertIsNone(parent)
        self.assertRegex(warning, "has no bmsnap cluster index.*a full image was taken instead")
        self.parent()
        with self.assertRaises(self.incremental.SnapshotImageError):
            self.deploy._usable_parent(self.images, args, "p2")   # another project's: no fallback

    def test_access_rules(self):
        from bmsnap_ironic import glance
        rules = glance._access_rules("img", "idx", (PARENT, "pidx"))
        self.assertEqual(sorted("%s %s" % r for r in rules), sorted([
            "GET /v2/images/img", "PATCH /v2/images/img", "PUT /v2/images/img/file",
            "GET /v2/images/idx", "PATCH /v2/images/idx", "PUT /v2/images/idx/file",
            "GET /v2/images/%s" % PARENT, "GET /v2/images/pidx", "GET /v2/images/pidx/file"]))
        self.assertEqual(len(glance._access_rules("img", None, None)), 3)

    def test_failure_deletes_the_index_image_too(self):
        with mock.patch.object(self.deploy, "GlanceImages") as gi:
            node = mock.Mock(uuid="n", driver_internal_info={self.deploy.INFO: {
                "image_id": "img", "index_image_id": "idx", "state": "uploading"}})
            node.set_driver_internal_info.side_effect = lambda k, v: node.driver_internal_info.__setitem__(k, v)
            self.deploy.BmsnapDeploy()._drop_image(mock.Mock(node=node), "test")
            self.assertEqual([c.args[0] for c in gi.return_value.delete.call_args_list], ["img", "idx"])
            self.assertEqual(node.driver_internal_info[self.deploy.INFO]["state"], "deleted")

    def test_index_mismatch_fails_verification(self):
        self.images.get.side_effect = lambda i: ({"id": "img", "bmsnap_index_image": "idx",
                                                  "bmsnap_index_sha256": "b" * 64} if i == "img"
                                                 else {"id": "idx", "status": "active",
                                                       "bmsnap_index_of": "img"})
        self.images.sha256.return_value = "b" * 64
        self.assertEqual(self.incremental.verify_index(self.images, "img", "idx", {"index_sha256": "b" * 64}), [])
        self.images.sha256.return_value = "c" * 64
        self.assertEqual(len(self.incremental.verify_index(self.images, "img", "idx", {"index_sha256": "b" * 64})), 1)
        self.assertEqual(len(self.incremental.verify_index(self.images, "img", "idx", {"index_sha256": "d" * 64})), 1)
