"""moto's server, with three changes, all for what a thousand Stacks do to it.

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

Third, GetResources pages as AWS does when only ResourcesPerPage is given. AWS refuses a request
that gives both ResourcesPerPage and TagsPerPage, and caps a page by tags only when TagsPerPage is
given; moto applies its default of 100 tags to every page, so a page of resources with six tags
each held 16 of them, and a thousand keys took over 60 calls where AWS takes 10.

Nothing else of moto changes. `hack/testenv.sh` starts moto through this file.
"""

import sys
import threading

from moto.ec2.models.core import TaggedEC2Resource
from moto.ec2.utils import EC2_PREFIX_TO_RESOURCE, get_prefix
from moto.resourcegroupstaggingapi.models import ResourceGroupsTaggingAPIBackend
from moto.resourcegroupstaggingapi.responses import ResourceGroupsTaggingAPIResponse
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

# Whether the request being answered on this thread gave TagsPerPage.
_request = threading.local()
_respond = ResourceGroupsTaggingAPIResponse.get_resources
_page = ResourceGroupsTaggingAPIBackend.get_resources


def respond_paged_by_resources(self):
    _request.tags_per_page_given = self._get_param("TagsPerPage") is not None
    try:
        return _respond(self)
    finally:
        _request.tags_per_page_given = True


def page_by_resources(self, *args, **kwargs):
    if not getattr(_request, "tags_per_page_given", True):
        kwargs["tags_per_page"] = sys.maxsize
    return _page(self, *args, **kwargs)


ResourceGroupsTaggingAPIResponse.get_resources = respond_paged_by_resources
ResourceGroupsTaggingAPIBackend.get_resources = page_by_resources

if __name__ == "__main__":
    sys.exit(main())
