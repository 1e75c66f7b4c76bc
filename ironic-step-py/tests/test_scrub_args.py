"""The snapshot step's scrub arguments, validated at the conductor (the agent checks the
operation names it implements)."""

import unittest

from ironic.common import exception

from bmsnap_ironic import args as step_args


class ScrubArgsTest(unittest.TestCase):
    def test_off_by_default(self):
        self.assertNotIn("scrub", step_args.validate({}))
        self.assertNotIn("scrub", step_args.validate({"scrub": False}))

    def test_true_or_a_list(self):
        self.assertIs(step_args.validate({"scrub": True})["scrub"], True)
        out = step_args.validate({"scrub": "default,ssh-userdir", "scrub_paths": ["/opt/app/.env"]})
        self.assertEqual(out["scrub"], "default,ssh-userdir")
        self.assertEqual(out["scrub_paths"], ["/opt/app/.env"])

    def test_bad_values(self):
        for bad in ({"scrub": "logs;rm -rf /"}, {"scrub": 3}, {"scrub": ""},
                    {"scrub_paths": ["/x"]},                      # without scrub
                    {"scrub": True, "scrub_paths": "/x"},         # not a list
                    {"scrub": True, "scrub_paths": ["relative"]},
                    {"scrub": True, "scrub_paths": ["/a/../etc"]},
                    {"scrub": True, "scrub_paths": ["/"]}):
            with self.assertRaises(exception.InvalidParameterValue, msg=repr(bad)):
                step_args.validate(bad)

    def test_declared(self):
        self.assertIn("scrub", step_args.ARGSINFO)
        self.assertIn("scrub_paths", step_args.ARGSINFO)
