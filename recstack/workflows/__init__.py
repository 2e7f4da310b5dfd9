"""Feature workflows: NVTabular-style ops fitted on train (pandas or Dask partitions), applied
to batches and to single requests with the same saved statistics; schema + tags for the later
stages.

    from recstack.workflows import Workflow, Categorify, Normalize, FillMissing, AddTags, Tags
    wf = Workflow(["gender"] >> Categorify() >> AddTags(Tags.USER)).fit(train)
    wf.transform(df); wf.transform_request({"gender": "M"}); wf.save(dir); Workflow.load(dir)
"""

from recstack.workflows.defaults import default_workflow
from recstack.workflows.export import fit_and_export
from recstack.workflows.graph import Group, Node
from recstack.workflows.operator import Context, Operator, register_op
from recstack.workflows.ops import (
    AddTags,
    Bucketize,
    Categorify,
    Clip,
    DateTimeParts,
    DifferenceLag,
    FillMissing,
    Filter,
    Groupby,
    HashBucket,
    HashedCross,
    JoinExternal,
    JoinGroupby,
    LambdaOp,
    ListSlice,
    LogOp,
    Normalize,
    NormalizeMinMax,
    Rename,
    SelectByTag,
    TargetEncoding,
    TimeSince,
    register_function,
)
from recstack.workflows.schema import ColumnSchema, Schema, Tags
from recstack.workflows.sequences import history_before_each, user_histories
from recstack.workflows.workflow import Workflow

__all__ = [
    "AddTags", "Bucketize", "Categorify", "Clip", "ColumnSchema", "Context", "DateTimeParts", "DifferenceLag",
    "FillMissing", "Filter", "Group", "Groupby", "HashBucket", "HashedCross", "JoinExternal", "JoinGroupby",
    "LambdaOp", "ListSlice", "LogOp", "Node", "Normalize", "NormalizeMinMax", "Operator", "Rename", "Schema",
    "SelectByTag", "Tags", "TargetEncoding", "TimeSince", "Workflow", "default_workflow", "fit_and_export",
    "history_before_each", "register_function", "register_op", "user_histories",
]
