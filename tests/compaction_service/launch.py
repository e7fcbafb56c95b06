"""Runs a compaction service whose workers run a test compaction function (for fault tests).

`python -m tests.compaction_service.launch ROOT FUNCTION QUEUE_SIZE` serves on a free port with
one worker; FUNCTION names a function in tests.compaction_service.helpers. It logs the same
ready line as `streamlet compaction-service`.
"""

import sys

from compaction_service.cli import run
from compaction_service.server import ServiceConfig
from tests.compaction_service import helpers

if __name__ == "__main__":
    root, function, queue_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    run(
        ServiceConfig(
            allowed_roots=(root,),
            workers=1,
            queue_capacity=queue_size,
            compaction_fn=getattr(helpers, function),
        )
    )
