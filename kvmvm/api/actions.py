"""PUT /actions: InstanceStart, SendCtrlAltDel, FlushMetrics."""

from __future__ import annotations

from kvmvm.api.fields import parse_body, req

ACTION = {"action_type": req(("FlushMetrics", "InstanceStart", "SendCtrlAltDel"))}


def put_actions(vmm, body, rest):
    action = parse_body(body, ACTION)["action_type"]
    if action == "InstanceStart":
        vmm.start()
    elif action == "SendCtrlAltDel":
        vmm.ctrl_alt_del()
    else:
        vmm.metrics.flush()


ROUTES = [("PUT", "actions", put_actions, "put_api_requests", "actions")]
