"""The built-in workflow operators, one module per family; importing this package registers
them all, so :meth:`Workflow.load <recstack.workflows.workflow.Workflow.load>` finds them.

* :mod:`.categorical`: Categorify (frequency vocabulary; single / joint / combo; lists);
* :mod:`.hashing`: HashBucket, HashedCross (stable hashes, no vocabulary);
* :mod:`.continuous`: FillMissing, Normalize, NormalizeMinMax, Clip, LogOp, Bucketize;
* :mod:`.target`: TargetEncoding (k-fold out of fold, smoothed);
* :mod:`.joins`: JoinGroupby (per-key count / sum / mean ...), JoinExternal;
* :mod:`.datetime`: DateTimeParts, TimeSince, DifferenceLag;
* :mod:`.lists`: Groupby (per-key time-ordered lists), ListSlice;
* :mod:`.frame`: Rename, Filter, LambdaOp (functions saved by reference);
* :mod:`.tags`: AddTags, SelectByTag (schema only).
"""

from recstack.workflows.ops.categorical import Categorify
from recstack.workflows.ops.continuous import Bucketize, Clip, FillMissing, LogOp, Normalize, NormalizeMinMax
from recstack.workflows.ops.datetime import DateTimeParts, DifferenceLag, TimeSince
from recstack.workflows.ops.frame import Filter, LambdaOp, Rename, register_function
from recstack.workflows.ops.hashing import HashBucket, HashedCross
from recstack.workflows.ops.joins import JoinExternal, JoinGroupby
from recstack.workflows.ops.lists import Groupby, ListSlice
from recstack.workflows.ops.tags import AddTags, SelectByTag, SelectColumns
from recstack.workflows.ops.target import TargetEncoding

__all__ = ["AddTags", "Bucketize", "Categorify", "Clip", "DateTimeParts", "DifferenceLag", "FillMissing",
           "Filter", "Groupby", "HashBucket", "HashedCross", "JoinExternal", "JoinGroupby", "LambdaOp",
           "ListSlice", "LogOp", "Normalize", "NormalizeMinMax", "Rename", "SelectByTag", "SelectColumns", "TargetEncoding",
           "TimeSince", "register_function"]
