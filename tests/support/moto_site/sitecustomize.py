"""Imported by Python at start-up in the moto_server the tests run: `tests/support/moto.rs` puts
this directory on its PYTHONPATH. Nothing else loads it.

moto 5.2.5 looks up one EC2 resource's tags by scanning every tag of every resource in the
region (`TaggedEC2Resource.get_tags` calls `describe_tags` with a `resource-id` filter, which
copies and regex-matches the whole tag table). A tag-filtered DescribeInstances checks each
instance that way, so it costs instances x resources: 9 s for one request's listing at 800
instances, minutes at 5,000, where EC2 answers in well under a second. The operator's cost is
what the tests measure, so this reads the one resource's tags directly: the same answer (the
resource's tags, exact id), in constant time.

moto 5.2.5 also fails (HTTP 500) a TerminateInstances naming a machine a cancelled spot fleet
request already terminated: `Instance.terminate` looks its fleet up again and finds none. EC2
answers such a call with the machine's state (terminated, or shutting-down), and a release sends
it (it terminates the machines of its view after deleting their fleets). A machine already
terminated is left as it is here too.
"""

try:
    from moto.ec2.models.core import TaggedEC2Resource
    from moto.ec2.utils import EC2_PREFIX_TO_RESOURCE, get_prefix

    def _get_tags(self):
        if not self.id:
            return []
        kind = EC2_PREFIX_TO_RESOURCE.get(get_prefix(self.id), "")
        tags = self.ec2_backend.tags.get(self.id, {})
        return [{"resource_id": self.id, "key": k, "value": v, "resource_type": kind} for k, v in tags.items()]

    TaggedEC2Resource.get_tags = _get_tags
except Exception as error:  # a moto that moved these: unpatched (slower, the same answers)
    import sys

    print(f"orb tests: moto's tag lookup left unpatched: {error!r}", file=sys.stderr)

try:
    import copy

    from moto.ec2.models.instances import Instance

    _terminate = Instance.terminate

    def _terminate_once(self):
        if self._state.name == "terminated":
            return copy.copy(self._state)
        return _terminate(self)

    Instance.terminate = _terminate_once
except Exception as error:  # a moto that moved it: unpatched (that call fails as before)
    import sys

    print(f"orb tests: moto's Instance.terminate left unpatched: {error!r}", file=sys.stderr)
