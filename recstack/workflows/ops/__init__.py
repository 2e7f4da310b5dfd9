"""The built-in workflow operators, one module per family; importing this package registers
them all, so :meth:`Workflow.load <recstack.workflows.workflow.Workflow.load>` finds them.

* :mod:`.categorical`: Categorify (categories -> int64 codes, element-wise for lists);
* :mod:`.continuous`: FillMissing, Normalize (numeric columns);
* :mod:`.tags`: AddTags (schema only).

A new op goes in the module of its family (a new module for a new family: ``datetime``,
``lists``, ``joins``...) and is re-exported here.
"""

from recstack.workflows.ops.categorical import Categorify
from recstack.workflows.ops.continuous import FillMissing, Normalize
from recstack.workflows.ops.tags import AddTags

__all__ = ["AddTags", "Categorify", "FillMissing", "Normalize"]
