"""Feature workflows: NVTabular-style ops fitted on train, applied to batches and to single
requests with the same saved statistics; schema + tags for the later stages.

    from recstack.workflows import Workflow, Categorify, Normalize, FillMissing, AddTags, Tags
    wf = Workflow(["gender"] >> Categorify() >> AddTags(Tags.USER)).fit(train)
    wf.transform(df); wf.transform_request({"gender": "M"}); wf.save(dir); Workflow.load(dir)
"""

from recstack.workflows.defaults import default_workflow
from recstack.workflows.export import fit_and_export
from recstack.workflows.graph import Group, Node
from recstack.workflows.operator import Operator, register_op
from recstack.workflows.ops import AddTags, Categorify, FillMissing, Normalize
from recstack.workflows.schema import ColumnSchema, Schema, Tags
from recstack.workflows.sequences import history_before_each, user_histories
from recstack.workflows.workflow import Workflow

__all__ = [
    "AddTags",
    "Categorify",
    "ColumnSchema",
    "FillMissing",
    "Group",
    "Node",
    "Normalize",
    "Operator",
    "Schema",
    "Tags",
    "Workflow",
    "default_workflow",
    "fit_and_export",
    "history_before_each",
    "register_op",
    "user_histories",
]
