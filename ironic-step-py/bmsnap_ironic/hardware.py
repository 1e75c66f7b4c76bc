"""Thin hardware types that add the ``bmsnap`` deploy interface to stock ones.

Ironic loads a deploy interface only for hardware types that list it (an exact type check),
so a node uses ``driver=bmsnap-ipmi`` (or -redfish, or -fake-hardware for tests) with
``deploy_interface=bmsnap``; everything else is the stock type's.
"""

from ironic.drivers import fake_hardware
from ironic.drivers import ipmi
from ironic.drivers import redfish
from ironic.drivers.modules import noop_mgmt

from bmsnap_ironic.deploy import BmsnapDeploy
from bmsnap_ironic.fake_boot import RecordingFakeBoot


def _with_bmsnap(cls):
    return [BmsnapDeploy] + list(cls().supported_deploy_interfaces)


class BmsnapIPMIHardware(ipmi.IPMIHardware):
    @property
    def supported_deploy_interfaces(self):
        return _with_bmsnap(ipmi.IPMIHardware)


class BmsnapRedfishHardware(redfish.RedfishHardware):
    @property
    def supported_deploy_interfaces(self):
        return _with_bmsnap(redfish.RedfishHardware)


class BmsnapFakeHardware(fake_hardware.FakeHardware):
    @property
    def supported_deploy_interfaces(self):
        return _with_bmsnap(fake_hardware.FakeHardware)

    @property
    def supported_boot_interfaces(self):
        return [RecordingFakeBoot] + list(fake_hardware.FakeHardware().supported_boot_interfaces)

    @property
    def supported_management_interfaces(self):
        # fake management boots only from PXE; a deploy ends with "boot from disk" (noop takes it)
        return list(fake_hardware.FakeHardware().supported_management_interfaces) + [noop_mgmt.NoopManagement]
