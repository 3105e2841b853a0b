"""plugins_cpp/include/bimaco/contract.h mirrors bimaco_deploy/plugins/contract.py.

contract.py is the one home of the op contract; the C++ header repeats the constants the
kernels and the plugin need. This holds every constant of the header to its Python twin,
so a change on one side that misses the other fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

from bimaco_deploy.plugins import contract

HEADER = Path(__file__).resolve().parents[2] / "plugins_cpp" / "include" / "bimaco" / "contract.h"


def _constants() -> dict:
    text = HEADER.read_text()
    out = {}
    for m in re.finditer(r"constexpr\s+(?:const\s+char\s*\*|int)\s+(k\w+)\s*=\s*([^;]+);", text):
        value = m.group(2).strip()
        if value.startswith('"'):
            out[m.group(1)] = value.strip('"')
        else:
            out[m.group(1)] = eval(value, {}, {})  # integer expressions such as 1 << 15
    return out


def test_header_constants_match_contract_py():
    c = _constants()
    assert c["kContractVersion"] == contract.CONTRACT_VERSION
    assert c["kWordBits"] == contract.WORD_BITS
    assert c["kPluginVersion"] == contract.PLUGIN_VERSION
    assert c["kPluginNamespace"] == contract.PLUGIN_NAMESPACE
    assert c["kConvOpName"] == contract.CONV_OP and c["kLinearOpName"] == contract.LINEAR_OP
    assert c["kHalfBits"] == contract.HALF_BITS
    assert c["kSmbMaxChannels"] == contract.SMB_MAX_CHANNELS
    assert c["kSmbMaxEntries"] == contract.SMB_MAX_ENTRIES
    assert c["kMaxLrmbRank"] == contract.MAX_LRMB_RANK
    side = {c["kAttrRprelu"], c["kAttrSmb"], c["kAttrLrmbRank"]}
    assert side == set(contract.SIDE_INPUTS)
    assert set(contract.BINARY_CONV2D.side) == side and set(contract.BINARY_LINEAR.side) == side - {"rprelu"}
    for spec in contract.OPS.values():
        for a in spec.side:
            assert spec.attribute(a).onnx_type == "INT" and spec.attribute(a).default == 0


def test_header_names_every_side_input_in_contract_order():
    """The header's comment lists the side inputs; the order is the contract's."""
    text = HEADER.read_text()
    order = [n for names in contract.SIDE_INPUTS.values() for n in names]
    positions = [text.index(n) for n in order]
    assert positions == sorted(positions), order
