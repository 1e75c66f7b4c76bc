"""A fake boot interface for tests: "boots the ramdisk" by writing its kernel parameters to
``<[bmsnap]fake_boot_dir>/<node uuid>.cmdline``, where a test harness picks them up and starts
the agent - the same hand-over a PXE config file gives a real ramdisk."""

import os

from ironic.drivers.modules import fake
from oslo_config import cfg

CONF = cfg.CONF
CONF.register_opts([cfg.StrOpt("fake_boot_dir", default="/tmp/bmsnap-fake-boot",
                               help="Where bmsnap-fake boot writes ramdisk parameters.")],
                   group="bmsnap")


class RecordingFakeBoot(fake.FakeBoot):
    def prepare_ramdisk(self, task, ramdisk_params, mode="deploy"):
        os.makedirs(CONF.bmsnap.fake_boot_dir, exist_ok=True)
        path = os.path.join(CONF.bmsnap.fake_boot_dir, "%s.cmdline" % task.node.uuid)
        params = dict(ramdisk_params)
        # what BOOTIF does for a PXE-booted ramdisk: lets the agent look its node up (a deploy
        # has no pre-generated token; the node has no ports for a MAC lookup)
        params.setdefault("ipa-node-uuid", task.node.uuid)
        words = " ".join("%s=%s" % (k, v) for k, v in sorted(params.items()))
        tmp = path + ".tmp"
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(words + "\n")
        os.rename(tmp, path)

    def clean_up_ramdisk(self, task, mode="deploy"):
        try:
            os.unlink(os.path.join(CONF.bmsnap.fake_boot_dir, "%s.cmdline" % task.node.uuid))
        except FileNotFoundError:
            pass
