"""PUT /actions: InstanceStart, SendCtrlAltDel, FlushMetrics; and `Stop`, a kvmvm
extension (Firecracker has no stop: its clients kill the process), used by `kvmvm vm stop`."""

from __future__ import annotations

from kvmvm.api.fields import load_json, parse_struct, req

ACTION = {"action_type": req(("FlushMetrics", "InstanceStart", "SendCtrlAltDel"))}
KVMVM_STOP = {"action_type": "Stop"}


def put_actions(vmm, body, rest):
    obj = load_json(body)
    if obj == KVMVM_STOP:
        vmm.stop_vm()
        return
    action = parse_struct(obj, ACTION)["action_type"]
    if action == "InstanceStart":
        vmm.start()
    elif action == "SendCtrlAltDel":
        vmm.ctrl_alt_del()
    else:
        vmm.metrics.flush()


ROUTES = [("PUT", "actions", put_actions, "put_api_requests", "actions")]
