"""Conductor side of the bmsnap ``snapshot`` service step for OpenStack Ironic."""
