"""Validation of the ``snapshot`` step's arguments (what operators pass in --service-steps), as
Ironic wants it: the checks of step_args.py, their failure as InvalidParameterValue."""

from ironic.common import exception

from bmsnap_ironic.step_args import ARGSINFO, StepArgsError, check

__all__ = ["ARGSINFO", "validate"]


def validate(args):
    """Returns the normalised arguments or raises InvalidParameterValue (one clear line)."""
    try:
        return check(args)
    except StepArgsError as e:
        raise exception.InvalidParameterValue(str(e)) from None
