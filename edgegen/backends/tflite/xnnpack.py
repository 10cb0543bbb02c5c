"""Delegation report: which operators the runtime's default delegate (XNNPACK) took, and into how
many partitions the graph split. Reads an allocated interpreter; standard library only, so the
device half can report too."""

from __future__ import annotations

from collections import Counter
from typing import Any


def report(interpreter: Any) -> dict[str, Any]:
    """Per-op delegation of an allocated TFLite interpreter (either runtime).

    After allocation the interpreter lists the model's operators followed by one DELEGATE node per
    partition; a partition covers the operators between its input and output tensors.
    """
    details = interpreter._get_ops_details()  # the only view of the execution plan both runtimes offer
    delegates = [d for d in details if d["op_name"] == "DELEGATE"]
    model_ops = [d for d in details if d["op_name"] != "DELEGATE"]
    producer = {int(t): d for d in model_ops for t in d["outputs"]}
    taken: set[int] = set()
    for partition in delegates:
        boundary = {int(t) for t in partition["inputs"]}
        stack = [int(t) for t in partition["outputs"]]
        while stack:
            op = producer.get(stack.pop())
            if op is None or op["index"] in taken:
                continue
            taken.add(op["index"])
            stack.extend(int(t) for t in op["inputs"] if int(t) not in boundary and int(t) >= 0)
    by_op: dict[str, dict[str, int]] = {}
    for op in model_ops:
        entry = by_op.setdefault(op["op_name"], {"delegated": 0, "cpu": 0})
        entry["delegated" if op["index"] in taken else "cpu"] += 1
    cpu = Counter(op["op_name"] for op in model_ops if op["index"] not in taken)
    return {"delegate": "XNNPACK" if delegates else None, "ops": len(model_ops), "delegated": len(taken),
            "partitions": len(delegates), "by_op": dict(sorted(by_op.items())),
            "cpu_ops": dict(sorted(cpu.items()))}


def summary(rep: dict[str, Any]) -> str:
    """One line: 'XNNPACK took 40/42 ops in 2 partitions; on the CPU kernels: MIRROR_PAD x2'."""
    cpu = ", ".join(f"{op} x{n}" for op, n in rep["cpu_ops"].items()) or "none"
    if not rep["delegate"]:
        return f"no delegate took any of the {rep['ops']} ops (all run on the runtime's own kernels)"
    return (f"XNNPACK took {rep['delegated']}/{rep['ops']} ops in {rep['partitions']} partition(s); "
            f"on the runtime's own kernels: {cpu}")
