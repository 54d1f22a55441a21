"""moto's server, with two changes, both for what a thousand Stacks do to it.

moto (5.2.5) reads an EC2 resource's tags by matching a `resource-id` filter against every tag of
every resource in the region (`TaggedEC2Resource.get_tags` through `TagBackend.describe_tags`).
Each resource it renders or filters therefore costs time in proportion to all the tags there are,
and listing N resources costs N squared: with a thousand Stacks, one DescribeSubnets took longer
than the SDK's 30 s attempt timeout and moto answered one request every few seconds.

Here a resource's tags are read from its own entry in the same store instead. The answer is the
same: the same entries, in the same order, for the exact ID that the filter matched.

Second, the Resource Groups Tagging API's GetResources pages through a generator kept between
requests, which walks the live dictionaries of every service. When another request adds a resource
(a KMS key) between two pages, the next page fails with "dictionary changed size during iteration"
(a 500), and the retried page finds the generator finished and answers "last page": the list ends
short, silently, and the operator's keys seem to vanish. Here the matching resources are taken
once, when the first page is asked for, and the pages are cut from that list: what AWS does,
a list as of its start.

Nothing else of moto changes. `hack/testenv.sh` starts moto through this file.
"""

import sys

from moto.ec2.models.core import TaggedEC2Resource
from moto.ec2.utils import EC2_PREFIX_TO_RESOURCE, get_prefix
from moto.resourcegroupstaggingapi.models import ResourceGroupsTaggingAPIBackend
from moto.server import main


def get_tags(self):
    tags = self.ec2_backend.tags.get(self.id) if self.id else None
    if not tags:
        return []
    resource_type = EC2_PREFIX_TO_RESOURCE.get(get_prefix(self.id), "")
    return [
        {"resource_id": self.id, "key": key, "value": value, "resource_type": resource_type}
        for key, value in tags.items()
    ]


TaggedEC2Resource.get_tags = get_tags

_resources = ResourceGroupsTaggingAPIBackend._get_resources_generator


def resources_as_of_now(self, *args, **kwargs):
    while True:
        try:
            return iter(list(_resources(self, *args, **kwargs)))
        except RuntimeError:
            # Another request changed a dictionary while this one walked it: walk it again.
            continue


ResourceGroupsTaggingAPIBackend._get_resources_generator = resources_as_of_now

if __name__ == "__main__":
    sys.exit(main())
