"""The logical job graph and its plan: nodes, edges, parallelism and operator chains.

Every `Job` method that transforms a stream adds a `Node`; its `Edge`s name the upstream node, the
output they read (main, or a side output tag), the partitioner and the input index (0 or 1 for
two-input operators). `plan()` resolves parallelism and partitioners (forward when parallelism is
equal, rebalance otherwise, unless one is set) and groups forward-connected nodes of equal
parallelism, where the upstream node has no other consumer, into chains that run in one subtask.
"""

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from streamlet.connectors.base import Source
from streamlet.errors import JobDefinitionError
from streamlet.operators import Operator
from streamlet.partitioners import ForwardPartitioner, Partitioner, RebalancePartitioner
from streamlet.watermarks import WatermarkStrategy


class NodeKind(enum.Enum):
    SOURCE = "source"
    OPERATOR = "operator"
    SINK = "sink"


@dataclass(eq=False)
class Edge:
    upstream: "Node"
    tag: str | None = None
    partitioner: Partitioner | None = None
    input_index: int = 0


@dataclass(eq=False)
class Node:
    id: int
    name: str
    kind: NodeKind
    inputs: list[Edge] = field(default_factory=list)
    create_operator: Callable[[], Operator] | None = None
    source: Source | None = None
    watermarks: WatermarkStrategy | None = None
    parallelism: int | None = None
    uid: str | None = None

    @property
    def operator_uid(self) -> str:
        """The name of this node's state in checkpoints: set with `.uid()`, else derived."""
        if self.uid is not None:
            return self.uid
        return f"{self.id}-{re.sub(r'[^A-Za-z0-9_.-]+', '-', self.name).strip('-')}"

    def __repr__(self) -> str:
        return f"Node({self.id}, {self.name!r})"


@dataclass(eq=False)
class Chain:
    """Nodes that run together in each subtask, head first."""

    id: int
    nodes: list[Node]
    parallelism: int

    @property
    def head(self) -> Node:
        return self.nodes[0]

    @property
    def name(self) -> str:
        return " -> ".join(node.name for node in self.nodes)


@dataclass(eq=False)
class ChainEdge:
    """An edge between chains: from the last node of `upstream` to the head of `downstream`."""

    upstream: Chain
    downstream: Chain
    tag: str | None
    partitioner: Partitioner
    input_index: int


@dataclass
class Plan:
    chains: list[Chain]
    edges: list[ChainEdge]


class JobGraph:
    def __init__(self) -> None:
        self.nodes: list[Node] = []

    def add(
        self,
        name: str,
        kind: NodeKind,
        inputs: list[Edge] | None = None,
        *,
        create_operator: Callable[[], Operator] | None = None,
        source: Source | None = None,
        watermarks: WatermarkStrategy | None = None,
    ) -> Node:
        node = Node(
            len(self.nodes) + 1,
            name,
            kind,
            inputs or [],
            create_operator=create_operator,
            source=source,
            watermarks=watermarks,
        )
        self.nodes.append(node)
        return node

    def plan(self, default_parallelism: int) -> Plan:
        self._validate()
        parallelism = {node: node.parallelism or default_parallelism for node in self.nodes}
        consumers: dict[Node, list[tuple[Node, Edge]]] = {node: [] for node in self.nodes}
        for node in self.nodes:
            for edge in node.inputs:
                consumers[edge.upstream].append((node, edge))

        def partitioner_of(node: Node, edge: Edge) -> Partitioner:
            same = parallelism[edge.upstream] == parallelism[node]
            if edge.partitioner is None:
                return ForwardPartitioner() if same else RebalancePartitioner()
            if isinstance(edge.partitioner, ForwardPartitioner) and not same:
                raise JobDefinitionError(
                    f"forward edge from '{edge.upstream.name}' (parallelism "
                    f"{parallelism[edge.upstream]}) to '{node.name}' (parallelism "
                    f"{parallelism[node]}) needs equal parallelism"
                )
            return edge.partitioner

        chain_of: dict[Node, Chain] = {}
        chains: list[Chain] = []
        for node in self.nodes:  # nodes are created after their inputs: a topological order
            if len(node.inputs) == 1:
                edge = node.inputs[0]
                upstream = edge.upstream
                if (
                    edge.tag is None
                    and isinstance(partitioner_of(node, edge), ForwardPartitioner)
                    and len(consumers[upstream]) == 1
                ):
                    chain_of[upstream].nodes.append(node)
                    chain_of[node] = chain_of[upstream]
                    continue
            chain = Chain(len(chains), [node], parallelism[node])
            chains.append(chain)
            chain_of[node] = chain
        edges = [
            ChainEdge(
                chain_of[edge.upstream],
                chain_of[node],
                edge.tag,
                partitioner_of(node, edge),
                edge.input_index,
            )
            for node in self.nodes
            for edge in node.inputs
            if chain_of[node].head is node
        ]
        return Plan(chains, edges)

    def _validate(self) -> None:
        if not any(node.kind is NodeKind.SOURCE for node in self.nodes):
            raise JobDefinitionError("the job has no source")
        if not any(node.kind is NodeKind.SINK for node in self.nodes):
            raise JobDefinitionError("the job has no sink: add one with .sink(...)")
        uids: dict[str, Node] = {}
        for node in self.nodes:
            if node.parallelism is not None and node.parallelism < 1:
                raise JobDefinitionError(f"'{node.name}' has parallelism {node.parallelism}")
            other = uids.setdefault(node.operator_uid, node)
            if other is not node:
                raise JobDefinitionError(
                    f"uid {node.operator_uid!r} is used by both '{other.name}' and '{node.name}'"
                )
