"""CAM: softmax(rowmax(E) - E) == softmax(-E); fold the minus into the first MatMul.

Result: MatMul(Neg(X), X^T) -> Softmax -> MatMul, a clean chain precision tools can pin as one unit.
Negation is exact in floating point and softmax is shift-invariant, so the rewrite is exact up to the
rounding of the removed subtraction.
"""

from __future__ import annotations

import onnx

from danet_deploy.graph.editor import GraphEditor
from danet_deploy.graph.sites import find_sites


def simplify_cam(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Rewrite every CAM site in rowmax form; returns the model and the number of sites rewritten."""
    ed = GraphEditor(model)
    nodes = {n.name: n for n in model.graph.node}
    count = 0
    for site in find_sites(model):
        if site.kind != "cam" or site.form != "rowmax":
            continue
        energy, softmax = nodes[site.nodes[0]], nodes[site.softmax]
        x, x_t = energy.input[0], energy.input[1]
        negated = ed.add1("Neg", [x], "cam_neg_x")
        softmax.input[0] = ed.add1("MatMul", [negated, x_t], "cam_neg_energy")
        count += 1
    ed.commit()
    return model, count
